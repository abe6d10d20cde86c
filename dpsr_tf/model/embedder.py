"""Embeds items and queries with a trained checkpoint, in a fresh graph (no Estimator).

This is the pattern export and indexing use: build the towers in a new tf.compat.v1.Graph (same
variable names as the Estimator's), restore them with a tf.compat.v1.train.Saver, run them on
numpy inputs in batches.
"""
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import tables
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.towers import item_tower, query_tower

# Texts per run through a pretrained encoder (its activations are [batch, tokens, hidden]).
TEXT_BATCH = 256


def _ragged_placeholder(name: str):
    values = tf.compat.v1.placeholder(tf.int64, [None], name=f"{name}_values")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name=f"{name}_splits")
    return values, splits, tf.RaggedTensor.from_row_splits(values, splits, validate=True)


def _slice_ragged(values: np.ndarray, splits: np.ndarray, lo: int, hi: int):
    start, end = int(splits[lo]), int(splits[hi])
    return values[start:end].astype(np.int64), (splits[lo:hi + 1] - start).astype(np.int64)


def _graph_placeholders(side: str, features: dict) -> dict:
    """Click-graph list inputs of a searchgcn tower, added to `features`; key -> placeholder."""
    out = {}
    for hop in ("hop1", "hop2"):
        key = f"{side}_graph_{hop}"
        out[key] = tf.compat.v1.placeholder(tf.int64, [None, None], name=key)
        out[key + "_weight"] = tf.compat.v1.placeholder(tf.float32, [None, None],
                                                        name=key + "_weight")
    features.update(out)
    return out


class CheckpointEmbedder:
    """Query and item towers of a model directory, restored from a checkpoint.

    Args:
      model_dir: written by `dpsr train` (dpsr_config.json + checkpoints).
      checkpoint: a checkpoint prefix; default the newest in model_dir.
      model_config, layout_spec: override what model_dir's config says (e.g. the layout at
        its path on this machine).
    """

    def __init__(self, model_dir: str, checkpoint: Optional[str] = None,
                 model_config: Optional[ModelConfig] = None, layout_spec=None):
        if model_config is None or layout_spec is None:
            cfg, spec = model_dir_lib.load_model_config(model_dir)
            model_config = model_config or cfg
            layout_spec = layout_spec or spec
        self.model_config = model_config
        self.layout_spec = layout_spec
        self.checkpoint = model_dir_lib.latest_checkpoint(model_dir, checkpoint)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._item_in = {}
            values, splits, tokens = _ragged_placeholder("item_tokens")
            self._item_in["tokens"] = (values, splits)
            item_features = {"item_tokens": tokens}
            self._texts = model_config.text_encoder == "pretrained"   # raw text inputs
            if self._texts:
                self._item_in["text"] = tf.compat.v1.placeholder(tf.string, [None],
                                                                 name="item_text")
                item_features["item_text"] = self._item_in["text"]
            for name in layout_spec.item_features:
                ph = tf.compat.v1.placeholder(tf.int64, [None], name=f"item_{name}")
                self._item_in[name] = ph
                item_features[f"item_{name}"] = ph
            self._graph = None
            if model_config.tower == "searchgcn":
                self._graph = tables.load_graph(layout_spec)
                self._item_in["graph"] = _graph_placeholders("item", item_features)
            # A query encoder of a teacher's list has no item tower (its items are the
            # teacher's embeddings, dpsr_tf/model/query_student.py).
            self.item_embedding = None if model_config.item_side == "teacher" else item_tower(
                item_features, model_config, layout_spec, tf.estimator.ModeKeys.PREDICT)
            self._query_in = {}
            values, splits, tokens = _ragged_placeholder("query_tokens")
            self._query_in["tokens"] = (values, splits)
            query_features = {"query_tokens": tokens}
            if self._texts:
                self._query_in["text"] = tf.compat.v1.placeholder(tf.string, [None],
                                                                  name="query")
                query_features["query"] = self._query_in["text"]
            if model_config.personalization in ("profile", "history"):
                for name in layout_spec.user_features:
                    ph = tf.compat.v1.placeholder(tf.int64, [None], name=f"user_{name}")
                    self._query_in[name] = ph
                    query_features[f"user_{name}"] = ph
            if model_config.personalization == "history":
                values, splits, hist = _ragged_placeholder("user_history")
                self._query_in["history"] = (values, splits)
                query_features["user_history"] = hist
            if self._graph is not None:
                self._query_in["graph"] = _graph_placeholders("query", query_features)
            self.query_embedding = query_tower(query_features, model_config, layout_spec,
                                               tf.estimator.ModeKeys.PREDICT)
            saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables(), sharded=True)
            self.session = tf.compat.v1.Session(graph=self.graph)
            model_dir_lib.restore(saver, self.session, self.checkpoint)

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def embed_items(self, token_ids: np.ndarray, token_splits: np.ndarray,
                    features: Dict[str, np.ndarray], batch_size: int = 4096,
                    rows: Optional[np.ndarray] = None,
                    texts: Optional[Sequence[str]] = None) -> np.ndarray:
        """Item embeddings.

        Args:
          token_ids: [T] int ids; token_splits: [N + 1] int64 (item i = ids[splits[i]:...]).
          features: item feature name -> [N] int ids (every name of layout_spec.item_features).
          rows: [N] layout item rows of these items (searchgcn: their click-graph lists);
            default 0..N-1, which must then be the whole item table.
          texts: [N] the items' titles (models with a pretrained text encoder need them).

        Returns:
          [N, d] float32, L2-normalized rows.
        """
        if self.item_embedding is None:
            raise ValueError(f"{self.checkpoint}: a --item_side=teacher model embeds queries "
                             "only; its items are its teacher's embeddings: give it to `dpsr "
                             "index --encoder_list --encoder_dir=TEACHER --encoder_query_dir`")
        n = len(token_splits) - 1
        if self._graph is not None and rows is None:
            if n != self.layout_spec.num_items:
                raise ValueError(f"embed_items of a searchgcn model: pass rows= (the layout item "
                                 f"rows of these {n} items; the layout has "
                                 f"{self.layout_spec.num_items})")
            rows = np.arange(n)
        texts = self._check_texts(texts, n, "embed_items", "item titles")
        if self._texts:
            batch_size = min(batch_size, TEXT_BATCH)
        out = np.zeros([n, self.model_config.embedding_dim], np.float32)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            values, splits = _slice_ragged(token_ids, token_splits, lo, hi)
            feed = {self._item_in["tokens"][0]: values, self._item_in["tokens"][1]: splits}
            if self._texts:
                feed[self._item_in["text"]] = texts[lo:hi]
            if self._graph is not None:
                self._feed_graph(feed, self._item_in["graph"], "item", rows[lo:hi])
            for name in self.layout_spec.item_features:
                feed[self._item_in[name]] = np.asarray(features[name][lo:hi], np.int64)
            out[lo:hi] = self.session.run(self.item_embedding, feed)
        return out

    def embed_catalog(self, table=None, batch_size: int = 4096, chunk: int = 65536,
                      progress: Optional[Callable[[int, int, float], None]] = None
                      ) -> np.ndarray:
        """Item embeddings of every item of the layout, in row order (`dpsr index` and a
        teacher cache both embed the catalog through here).

        Args:
          table: the layout's ItemTable (default: layout_spec's, memory-mapped), read `chunk`
            rows at a time so a large catalog's tokens are never copied whole.
          batch_size: items per session run (embed_items).
          progress: called after each chunk with (items done, items in all, seconds so far).

        Returns:
          [num_items, d] float32, L2-normalized rows.
        """
        if table is None:
            table = layout_lib.load_item_table(self.layout_spec, mmap=True)
        n = len(table.ids)
        features = {name: table.feature(name) for name in self.layout_spec.item_features}
        out = np.zeros([n, self.model_config.embedding_dim], np.float32)
        start = time.monotonic()
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            splits = table.token_splits[lo:hi + 1]
            out[lo:hi] = self.embed_items(
                np.asarray(table.token_ids[splits[0]:splits[-1]]), splits - splits[0],
                {k: v[lo:hi] for k, v in features.items()}, batch_size=batch_size,
                rows=np.arange(lo, hi),
                # The pretrained encoder reads the titles themselves.
                texts=table.titles[lo:hi] if self._texts else None)
            if progress is not None:
                progress(hi, n, time.monotonic() - start)
        return out

    def _check_texts(self, texts, n: int, caller: str, what: str):
        """texts as a [n] UTF-8 bytes array for a pretrained encoder (None otherwise)."""
        if not self._texts:
            return None
        if texts is None or len(texts) != n:
            raise ValueError(f"{caller}: a model with a pretrained text encoder needs the {what} "
                             f"(texts=, {n} of them); got "
                             f"{'none' if texts is None else len(texts)}")
        return np.array([t.encode("utf-8") if isinstance(t, str) else t for t in texts],
                        dtype=object)

    def _feed_graph(self, feed, placeholders, side, rows, count=0):
        """Feeds the click-graph lists of `rows` (None: `count` rows without neighbours)."""
        if rows is None:
            values = {k: np.zeros([count, 1], np.int64 if v.dtype == tf.int64 else np.float32)
                      for k, v in placeholders.items()}
        else:
            values = self._graph.features(side, rows)
        for key, ph in placeholders.items():
            feed[ph] = values[key]

    def embed_queries(self, token_ids: np.ndarray, token_splits: np.ndarray,
                      user_features: Optional[Dict[str, np.ndarray]] = None,
                      history: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                      batch_size: int = 4096,
                      query_rows: Optional[np.ndarray] = None,
                      texts: Optional[Sequence[str]] = None) -> np.ndarray:
        """Query head embeddings.

        Args:
          token_ids: [T] int ids; token_splits: [Q + 1] int64.
          user_features: name -> [Q] int ids (personalized models; 0 = unknown user).
          history: (item rows [H] int, splits [Q + 1] int64) for DPSR-h.
          query_rows: [Q] layout query rows (searchgcn: their click-graph lists); None = no
            graph lists (the text tower alone, as for a query never seen in training).
          texts: [Q] the query texts (models with a pretrained text encoder need them).

        Returns:
          [Q, m, d] float32.
        """
        cfg = self.model_config
        q = len(token_splits) - 1
        texts = self._check_texts(texts, q, "embed_queries", "query texts")
        if self._texts:
            batch_size = min(batch_size, TEXT_BATCH)
        out = np.zeros([q, cfg.num_heads, cfg.embedding_dim], np.float32)
        for lo in range(0, q, batch_size):
            hi = min(q, lo + batch_size)
            values, splits = _slice_ragged(token_ids, token_splits, lo, hi)
            feed = {self._query_in["tokens"][0]: values, self._query_in["tokens"][1]: splits}
            if self._texts:
                feed[self._query_in["text"]] = texts[lo:hi]
            if self._graph is not None:
                self._feed_graph(feed, self._query_in["graph"], "query",
                                 None if query_rows is None else query_rows[lo:hi], hi - lo)
            if cfg.personalization in ("profile", "history"):
                for name in self.layout_spec.user_features:
                    ids = (user_features or {}).get(name)
                    feed[self._query_in[name]] = (np.zeros(hi - lo, np.int64) if ids is None
                                                  else np.asarray(ids[lo:hi], np.int64))
            if cfg.personalization == "history":
                if history is None:
                    h_values, h_splits = np.zeros([0], np.int64), np.zeros(hi - lo + 1, np.int64)
                else:
                    h_values, h_splits = _slice_ragged(history[0], history[1], lo, hi)
                feed[self._query_in["history"][0]] = h_values
                feed[self._query_in["history"][1]] = h_splits
            out[lo:hi] = self.session.run(self.query_embedding, feed)
        return out
