"""Numeric features of a (query, candidate item) pair, computed in-graph by one function that
feature extraction (training data, the XGBoost baseline) and the servable both run.

Features (FEATURE_NAMES, docs/ranking.md):
  item_log_impressions  log(1 + times the item was shown in TRAIN sessions)
  item_mean_label       the item's mean label over its TRAIN impressions, smoothed toward the
                        global mean with `prior_weight` pseudo-impressions (the past CTR of
                        click logs; graded relevance on Home Depot)
  query_terms           number of lexical terms of the query
  title_terms           number of lexical terms of the item title
  lexical_overlap       fraction of the query's lexical terms that occur in the title
  bm25                  BM25 of the title for the query (Lucene idf, the project's lexical index
                        formula, search_cc/core/lexical_index.h; idf and avgdl over the whole catalog)
  dpsr_score            the DPSR retrieval score (max over query heads of the dot product, the
                        rule the servable ranks by)
  dpsr_log_rank         log(rank) of the item among the whole catalog by DPSR score (1 = first)

No leakage: item statistics count TRAIN sessions only, and a TRAIN candidate's count only the
sessions before its own (ordered statistics, target_stats.py), so a training row's features
say nothing of its own label; eval rows and the servable use the full TRAIN statistics.

Tables (FeatureTables) are numpy arrays built once from the catalog, the train sessions and the
DPSR item embeddings; in a graph they become non-trainable variables under "dpr_tables/"
filled from placeholders (`TableVariables.initialize`), so a SavedModel stores them in its
variables, not in the GraphDef.
"""
import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf.tokenization import tokenize_op
from dpsr_tf.tokenization.tokenizer import Tokenizer
from dpsr_tf.indexing.lexical_manifest import LexicalConfig

FEATURE_NAMES = ("item_log_impressions", "item_mean_label", "query_terms", "title_terms",
                 "lexical_overlap", "bm25", "dpsr_score", "dpsr_log_rank")
NUM_FEATURES = len(FEATURE_NAMES)
TABLES_FILE = "feature_tables.npz"
TABLES_JSON = "feature_tables.json"


@dataclasses.dataclass
class FeatureTables:
    """What the feature function reads, as numpy.

    Attributes:
      item_impressions: [N] float32 TRAIN impressions of each item (layout rows).
      item_label_sum: [N] float32 sum of the item's TRAIN labels.
      global_mean_label: mean TRAIN label.
      prior_weight: pseudo-impressions of the smoothing.
      term_ids: [T] int64 sorted lexical term ids of the catalog; idf: [T] float32.
      item_term_values: [V] int64, item_term_splits: [N + 1] int64 lexical terms of each title.
      avg_doc_length, k1, b: BM25.
      lexical_features: the tokenizer feature kinds of lexical terms.
      item_embeddings: [N, d] float32 DPSR item embeddings (layout rows).
    """

    item_impressions: np.ndarray
    item_label_sum: np.ndarray
    global_mean_label: float
    prior_weight: float
    term_ids: np.ndarray
    idf: np.ndarray
    item_term_values: np.ndarray
    item_term_splits: np.ndarray
    avg_doc_length: float
    k1: float
    b: float
    lexical_features: Tuple[str, ...]
    item_embeddings: np.ndarray

    _ARRAYS = ("item_impressions", "item_label_sum", "term_ids", "idf", "item_term_values",
               "item_term_splits", "item_embeddings")

    @property
    def lexical_config(self) -> LexicalConfig:
        return LexicalConfig(features=tuple(self.lexical_features), k1=self.k1, b=self.b)

    @property
    def num_items(self) -> int:
        return len(self.item_impressions)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        np.savez(os.path.join(directory, TABLES_FILE),
                 **{k: getattr(self, k) for k in self._ARRAYS})
        scalars = {k: getattr(self, k) for k in ("global_mean_label", "prior_weight",
                                                 "avg_doc_length", "k1", "b")}
        scalars["lexical_features"] = list(self.lexical_features)
        with open(os.path.join(directory, TABLES_JSON), "w", encoding="utf-8") as f:
            json.dump(scalars, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> "FeatureTables":
        path = os.path.join(directory, TABLES_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {directory} is not a ranker model "
                                    f"directory (`dpsr train-ranker` writes it)")
        with open(os.path.join(directory, TABLES_JSON), encoding="utf-8") as f:
            scalars = json.load(f)
        scalars["lexical_features"] = tuple(scalars["lexical_features"])
        with np.load(path) as z:
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(**arrays, **scalars)


def build_feature_tables(titles, train_item_rows: np.ndarray, train_labels: np.ndarray,
                         item_embeddings: np.ndarray,
                         lexical: LexicalConfig = LexicalConfig(),
                         prior_weight: float = 5.0) -> FeatureTables:
    """Tables from the catalog titles [N], the TRAIN candidates (item rows [C], labels [C]) and
    the DPSR item embeddings [N, d] (layout row order)."""
    n = len(titles)
    if item_embeddings.shape[0] != n:
        raise ValueError(f"{item_embeddings.shape[0]} item embeddings for {n} catalog items: "
                         f"the index was built from another catalog")
    values, splits = Tokenizer(lexical.tokenizer_config()).tokenize(list(titles))
    values = values.astype(np.int64)
    lengths = np.diff(splits)
    # Document frequency: distinct terms per title.
    doc = np.repeat(np.arange(n), lengths)
    pairs = np.unique(np.stack([doc, values], 1), axis=0) if len(values) else np.zeros((0, 2))
    term_ids, df = np.unique(pairs[:, 1], return_counts=True)
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    impressions = np.bincount(train_item_rows, minlength=n).astype(np.float32)
    label_sum = np.bincount(train_item_rows, weights=train_labels, minlength=n).astype(np.float32)
    return FeatureTables(
        item_impressions=impressions, item_label_sum=label_sum,
        global_mean_label=float(np.mean(train_labels)) if len(train_labels) else 0.0,
        prior_weight=float(prior_weight), term_ids=term_ids.astype(np.int64), idf=idf,
        item_term_values=values, item_term_splits=splits.astype(np.int64),
        avg_doc_length=float(lengths.mean()) if n else 0.0, k1=float(lexical.k1),
        b=float(lexical.b), lexical_features=tuple(lexical.features),
        item_embeddings=np.asarray(item_embeddings, np.float32))


class TableVariables:
    """The tables as non-trainable variables under "dpr_tables/" in the current graph.

    Call `initialize(session)` once to fill them (or restore them from a checkpoint/SavedModel).
    """

    def __init__(self, tables: FeatureTables):
        self.tables = tables
        self._feed = {}
        self.variables = []
        with tf.compat.v1.variable_scope("dpr_tables"):
            for name in FeatureTables._ARRAYS:
                value = getattr(tables, name)
                ph = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape,
                                              name=f"{name}_value")
                var = tf.compat.v1.Variable(ph, trainable=False, name=name,
                                            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES])
                self._feed[ph] = value
                self.variables.append(var)
                setattr(self, name, var)
        self.initializer = tf.compat.v1.variables_initializer(self.variables)

    def initialize(self, session) -> None:
        session.run(self.initializer, self._feed)


def _dense(ragged: tf.RaggedTensor, pad) -> tf.Tensor:
    return ragged.to_tensor(default_value=tf.cast(pad, ragged.dtype))


def feature_graph(tables: TableVariables, query: tf.Tensor, item_rows: tf.Tensor,
                  query_heads: tf.Tensor, own_impressions: Optional[tf.Tensor] = None,
                  own_label_sum: Optional[tf.Tensor] = None) -> tf.Tensor:
    """The numeric features of every candidate.

    Args:
      tables: TableVariables.
      query: [B] tf.string query texts.
      item_rows: [B, N] int64 candidate item rows; -1 = padding (features 0).
      query_heads: [B, m, d] float32 DPSR query head embeddings.
      own_impressions, own_label_sum: [B, N] float32 the candidate's own contribution to the
        item statistics (TRAIN rows: 1 and its label; otherwise zeros / None).

    Returns:
      [B, N, NUM_FEATURES] float32 (FEATURE_NAMES order), zeros at padding.
    """
    t = tables.tables
    valid = item_rows >= 0
    rows = tf.maximum(item_rows, 0)
    b = tf.shape(item_rows)[0]
    n = tf.shape(item_rows)[1]
    zeros = tf.zeros_like(item_rows, tf.float32)
    own_impressions = zeros if own_impressions is None else own_impressions
    own_label_sum = zeros if own_label_sum is None else own_label_sum
    # Item statistics (leave-one-session-out for TRAIN rows).
    count = tf.gather(tables.item_impressions, rows) - own_impressions
    label_sum = tf.gather(tables.item_label_sum, rows) - own_label_sum
    log_impressions = tf.math.log1p(tf.maximum(count, 0.0))
    mean_label = ((label_sum + t.prior_weight * t.global_mean_label)
                  / (tf.maximum(count, 0.0) + t.prior_weight))
    # Lexical: query terms [B, Lq] (-1 pad) against each candidate's title terms [B*N, Li].
    q_terms = tokenize_op.tokenize(query, t.lexical_config.tokenizer_config())
    q_dense = _dense(q_terms, -1)                                           # [B, Lq]
    q_valid = tf.cast(tf.not_equal(q_dense, -1), tf.float32)
    q_len = tf.reduce_sum(q_valid, axis=1)                                  # [B]
    item_terms = tf.RaggedTensor.from_row_splits(tables.item_term_values,
                                                 tables.item_term_splits, validate=False)
    flat_rows = tf.reshape(rows, [-1])
    d_terms = tf.gather(item_terms, flat_rows)                              # [B*N, (Li)]
    d_dense = _dense(d_terms, -2)                                           # [B*N, Li]
    d_len = tf.cast(d_terms.row_lengths(), tf.float32)                     # [B*N]
    q_rep = tf.repeat(q_dense, n, axis=0)                                   # [B*N, Lq]
    tf_counts = tf.reduce_sum(tf.cast(tf.equal(q_rep[:, :, None], d_dense[:, None, :]),
                                      tf.float32), axis=2)                  # [B*N, Lq]
    pos = tf.minimum(tf.searchsorted(tables.term_ids, tf.reshape(q_dense, [-1])),
                     tf.maximum(tf.size(tables.term_ids) - 1, 0))
    known = tf.equal(tf.gather(tables.term_ids, pos), tf.reshape(q_dense, [-1]))
    q_idf = tf.reshape(tf.where(known, tf.gather(tables.idf, pos), 0.0), tf.shape(q_dense))
    q_idf = tf.repeat(q_idf, n, axis=0)
    norm = t.k1 * (1.0 - t.b + t.b * d_len / max(t.avg_doc_length, 1e-9))   # [B*N]
    bm25 = tf.reduce_sum(q_idf * tf_counts / (tf_counts + norm[:, None] + 1e-30), axis=1)
    q_valid_rep = tf.repeat(q_valid, n, axis=0)
    matched = tf.reduce_sum(q_valid_rep * tf.cast(tf_counts > 0, tf.float32), axis=1)
    q_len_rep = tf.repeat(q_len, n, axis=0)
    overlap = matched / tf.maximum(q_len_rep, 1.0)
    shape = tf.stack([b, n])
    bm25, overlap, d_len = (tf.reshape(x, shape) for x in (bm25, overlap, d_len))
    q_len_bn = tf.tile(q_len[:, None], [1, n])
    # DPSR: score of each candidate and its rank over the whole catalog.
    num_heads = int(query_heads.shape[1])
    all_scores = None
    for h in range(num_heads):                                              # [B, items]
        s = tf.matmul(query_heads[:, h, :], tables.item_embeddings, transpose_b=True)
        all_scores = s if all_scores is None else tf.maximum(all_scores, s)
    cand = tf.gather(all_scores, rows, batch_dims=1)                        # [B, N]
    # rank - 1 = items scored strictly higher; one query row at a time bounds the memory to
    # [N, items] (a full sort of the catalog per query is far slower on CPU).
    above = tf.map_fn(
        lambda x: tf.reduce_sum(tf.cast(tf.greater(x[0][None, :], x[1][:, None]), tf.int32),
                                axis=1),
        (all_scores, cand), fn_output_signature=tf.int32)
    log_rank = tf.math.log(tf.cast(above + 1, tf.float32))
    out = tf.stack([log_impressions, mean_label, q_len_bn, d_len, overlap, bm25, cand, log_rank],
                   axis=2)
    return tf.where(valid[:, :, None], out, 0.0)


class FeatureExtractor:
    """Runs `feature_graph` over SessionTables in a private graph (training data, baselines).

    Args:
      tables: FeatureTables.
      embedding_dim, num_heads: of the DPSR query heads fed with each batch.
    """

    def __init__(self, tables: FeatureTables, num_heads: int):
        self.graph = tf.Graph()
        d = tables.item_embeddings.shape[1]
        with self.graph.as_default():
            self.tables = TableVariables(tables)
            self.query = tf.compat.v1.placeholder(tf.string, [None], name="query")
            self.rows = tf.compat.v1.placeholder(tf.int64, [None, None], name="item_rows")
            self.heads = tf.compat.v1.placeholder(tf.float32, [None, num_heads, d], name="heads")
            self.own_n = tf.compat.v1.placeholder(tf.float32, [None, None], name="own_n")
            self.own_l = tf.compat.v1.placeholder(tf.float32, [None, None], name="own_l")
            self.features = feature_graph(self.tables, self.query, self.rows, self.heads,
                                          self.own_n, self.own_l)
            self.session = tf.compat.v1.Session(graph=self.graph)
            self.tables.initialize(self.session)

    def close(self):
        self.session.close()

    def run(self, table, query_heads: np.ndarray, leave_own_out: bool,
            batch_sessions: int = 64, log=print, own_stats=None) -> np.ndarray:
        """[C, NUM_FEATURES] float32 features of every candidate of a SessionTable.

        Args:
          table: SessionTable.
          query_heads: [S, m, d] float32 DPSR query embeddings of each session's query.
          leave_own_out: TRAIN sessions: take each candidate's own impression out of the item
            statistics; a [C] bool array does it for the candidates marked True only (those
            the statistics counted).
          own_stats: (impressions [C], label sums [C]) to take out of each candidate's item
            statistics instead (target_stats.later_contributions: TRAIN rows see only earlier
            sessions); leave_own_out is then not used.
        """
        own_mask = np.broadcast_to(np.asarray(leave_own_out, bool), [table.num_candidates])
        if own_stats is None:
            own_stats = (own_mask.astype(np.float32),
                         np.where(own_mask, table.labels, 0.0).astype(np.float32))
        out = np.zeros([table.num_candidates, NUM_FEATURES], np.float32)
        lengths = np.diff(table.splits)
        for lo in range(0, len(table), batch_sessions):
            hi = min(len(table), lo + batch_sessions)
            width = int(lengths[lo:hi].max()) if hi > lo else 0
            rows = np.full([hi - lo, width], -1, np.int64)
            own_n = np.zeros([hi - lo, width], np.float32)
            own_l = np.zeros([hi - lo, width], np.float32)
            for i, s in enumerate(range(lo, hi)):
                a, z = table.splits[s], table.splits[s + 1]
                rows[i, :z - a] = table.item_rows[a:z]
                own_n[i, :z - a] = own_stats[0][a:z]
                own_l[i, :z - a] = own_stats[1][a:z]
            feats = self.session.run(self.features, {
                self.query: [q.encode("utf-8") for q in table.queries[lo:hi]],
                self.rows: rows, self.heads: query_heads[lo:hi], self.own_n: own_n,
                self.own_l: own_l})
            for i, s in enumerate(range(lo, hi)):
                a, z = table.splits[s], table.splits[s + 1]
                out[a:z] = feats[i, :z - a]
            if log and (lo // batch_sessions) % 50 == 0:
                log(f"  features: {hi:,}/{len(table):,} sessions")
        return out
