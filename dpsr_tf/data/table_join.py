"""The layout's tables read in-graph, and the per-batch joins of interaction records with them.

How the tables are "loaded once" (docs/data_format.md, "Input pipeline"): the item, user and
query tables stay in the layout's .npy/.txt files. `read_tables` reads them with tf.io.read_file
+ tf.io.decode_raw where the input_fn runs: eagerly, right then; inside tf.estimator (graph
mode), as ops of the input_fn graph that the dataset's map function captures as inputs of the
dataset op, so they run once, when the Estimator initializes its iterator. Every batch's join
(tf.gather on those tensors) then sees the same tensors by reference. Nothing large is embedded
in the GraphDef (its 2 GB limit would break at ~1M items), and there is no per-example Python:
records are 24-byte fixed-length rows decoded per batch with decode_raw.

The features each join yields are listed in dpsr_tf/data/pipeline.py, which builds the
input functions on these joins.
"""
import os
from typing import Callable, Dict

import numpy as np
import tensorflow as tf

from dpsr_tf.data import hard_negative_table
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import tables as graph_tables

_NP_TO_TF = {np.dtype("<i4"): tf.int32, np.dtype("<i8"): tf.int64, np.dtype("<f4"): tf.float32}
_NUM_FIELDS = len(layout_lib.RECORD_DTYPE.names)


# ---------------------------------------------------------------------------------------------
# Tables, read in-graph.

def _read_npy(path: str) -> tf.Tensor:
    """In-graph read of a little-endian .npy file (int32/int64/float32, C order)."""
    offset, dtype, shape = layout_lib.npy_data_offset(path)
    if dtype not in _NP_TO_TF:
        raise ValueError(f"{path}: unsupported dtype {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = tf.io.read_file(path)
    data = tf.strings.substr(raw, tf.constant(offset, tf.int64), tf.constant(nbytes, tf.int64))
    flat = tf.io.decode_raw(data, _NP_TO_TF[dtype], little_endian=True)
    return tf.reshape(flat, shape)


def _read_lines(path: str) -> tf.Tensor:
    """[n] tf.string: the lines of a layout text table."""
    lines = tf.strings.split(tf.io.read_file(path), "\n")
    return lines[:-1]


def table_loader(spec: layout_lib.LayoutSpec, parts,
                 hard_negative_dir: str = "") -> Callable[[tf.Tensor], Dict]:
    """A function that reads the tables named in `parts` from the layout (and the mined
    hard-negative table of `hard_negative_dir`, a model directory, for "hard_negatives")."""
    p = spec.path

    def load(_):
        t = {}
        if "items" in parts:
            t["item_token_ids"] = _read_npy(p(layout_lib.ITEM_TOKEN_IDS))
            t["item_token_splits"] = _read_npy(p(layout_lib.ITEM_TOKEN_SPLITS))
            t["item_features"] = _read_npy(p(layout_lib.ITEM_FEATURES))
        if "item_ids" in parts:
            t["item_ids"] = _read_lines(p(layout_lib.ITEM_IDS))
        if "item_texts" in parts:   # raw titles, for towers that tokenize themselves
            t["item_titles"] = _read_lines(p(layout_lib.ITEM_TITLES))
        if "queries" in parts:
            t["query_texts"] = _read_lines(p(layout_lib.QUERY_TEXTS))
            t["query_token_ids"] = _read_npy(p(layout_lib.QUERY_TOKEN_IDS))
            t["query_token_splits"] = _read_npy(p(layout_lib.QUERY_TOKEN_SPLITS))
        if graph_tables.has_graph(spec):   # the click graph (dpsr prepare --graph)
            sides = [s for s, part in (("item", "items"), ("query", "queries")) if part in parts]
            for side in sides:
                for hop in graph_tables.HOPS:
                    t[f"{side}_graph_{hop}"] = _read_npy(p(graph_tables.table_path(side, hop)))
                    t[f"{side}_graph_{hop}_weight"] = _read_npy(
                        p(graph_tables.table_path(side, hop, weights=True)))
            if "queries" in parts:
                t["query_graph_node"] = _read_npy(p(graph_tables.QUERY_NODES))
                t["graph_item_base"] = tf.constant(graph_tables.load_meta(spec).item_base,
                                                   tf.int64)
        if "human_negatives" in parts:
            if os.path.exists(p(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS)):
                t["human_negative_items"] = _read_npy(p(layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS))
                t["human_negative_splits"] = _read_npy(
                    p(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS))
            else:  # a layout written before the table existed: no negatives by query
                t["human_negative_items"] = tf.zeros([0], tf.int32)
                t["human_negative_splits"] = tf.zeros([spec.num_queries + 1], tf.int64)
        if "hard_negatives" in parts:
            items_path, splits_path = hard_negative_table.table_paths(hard_negative_dir)
            t["hard_negative_items"] = _read_npy(items_path)
            t["hard_negative_splits"] = _read_npy(splits_path)
        if "users" in parts:
            feats = _read_npy(p(layout_lib.USER_FEATURES))
            # One extra all-zero row, gathered for "no user" (works with 0 users too).
            t["user_features"] = tf.concat(
                [feats, tf.zeros([1, len(spec.user_features)], tf.int32)], axis=0)
            t["history_items"] = _read_npy(p(layout_lib.USER_HISTORY_ITEMS))
            t["history_splits"] = _read_npy(p(layout_lib.USER_HISTORY_SPLITS))
        return t

    return load


def read_tables(spec: layout_lib.LayoutSpec, parts, hard_negative_dir: str = "") -> Dict:
    """The tables named in `parts` as tensors, read where the input_fn runs.

    Eagerly, the files are read here, once. Inside tf.estimator (graph mode) these are the
    read ops of the input_fn's graph; the dataset functions capture them as inputs of the
    dataset op, so they run once when the Estimator initializes its iterator. Either way the
    join functions get the same tensors for every batch, by reference.
    """
    return table_loader(spec, parts, hard_negative_dir)(None)


# ---------------------------------------------------------------------------------------------
# Joins (all per batch, in-graph).

def _gather_rows(values: tf.Tensor, splits: tf.Tensor, rows: tf.Tensor) -> tf.RaggedTensor:
    """Rows of a ragged table given as (values, splits): O(output) work.

    (tf.gather on a RaggedTensor validates the whole table's row splits on every call, which
    costs O(table rows) per batch at 1M items.)

    Args:
      values: [T] token ids (int32); splits: [N + 1] int64; rows: [b] int64.

    Returns:
      tf.RaggedTensor int64 [b, (n)].
    """
    starts = tf.gather(splits, rows)
    limits = tf.gather(splits, rows + 1)
    positions = tf.ragged.range(starts, limits)
    picked = tf.cast(tf.gather(values, positions.flat_values), tf.int64)
    return tf.RaggedTensor.from_row_splits(picked, positions.row_splits, validate=False)


def _gather_tokens(t: Dict, prefix: str, rows: tf.Tensor) -> tf.RaggedTensor:
    return _gather_rows(t[f"{prefix}_token_ids"], t[f"{prefix}_token_splits"], rows)


def item_features(spec: layout_lib.LayoutSpec, t: Dict, rows: tf.Tensor, prefix: str) -> Dict:
    """"<prefix>_row", "<prefix>_tokens" ragged int64 [b, (Li)], "<prefix>_<name>" int64 [b] of
    the item rows int64 [b] (and their click-graph lists when the layout has a graph, their
    titles "<prefix>_text" string [b] when the tables hold them: part "item_texts")."""
    out = {f"{prefix}_row": rows, f"{prefix}_tokens": _gather_tokens(t, "item", rows)}
    if "item_titles" in t:
        out[f"{prefix}_text"] = tf.gather(t["item_titles"], rows)
    cats = tf.cast(tf.gather(t["item_features"], rows), tf.int64)
    for j, name in enumerate(layout_lib.feature_columns(spec, "item")):
        out[f"{prefix}_{name}"] = cats[:, j]
    out.update(_graph_features(t, "item", rows, prefix))
    return out


def _graph_features(t: Dict, side: str, rows: tf.Tensor, prefix: str) -> Dict:
    """"<prefix>_graph_hop1", "_hop1_weight", "_hop2", "_hop2_weight" of the rows (nothing
    when the layout has no graph): node ids int64 [b, K] (0 = padding), weights float32."""
    out = {}
    for hop in graph_tables.HOPS:
        key = f"{side}_graph_{hop}"
        if key in t:
            out[f"{prefix}_graph_{hop}"] = tf.cast(tf.gather(t[key], rows), tf.int64)
            out[f"{prefix}_graph_{hop}_weight"] = tf.gather(t[key + "_weight"], rows)
    return out


def _hide_pair_edges(features: Dict, t: Dict) -> Dict:
    """Drops the training pair's own edge from both sides' one-hop lists, so the model cannot
    score a pair by the click it is being trained on (the item's node in its query's list and
    the query's node in its item's list)."""
    if "query_graph_hop1" not in features or "item_graph_hop1" not in features:
        return features
    item_node = t["graph_item_base"] + features["item_row"]
    query_node = tf.cast(tf.gather(t["query_graph_node"], features["query_row"]), tf.int64)
    for key, node in (("query_graph_hop1", item_node), ("item_graph_hop1", query_node)):
        same = tf.equal(features[key], node[:, None]) & (node[:, None] > 0)
        features[key] = tf.where(same, tf.zeros_like(features[key]), features[key])
        features[key + "_weight"] = tf.where(same, tf.zeros_like(features[key + "_weight"]),
                                             features[key + "_weight"])
    return features


def user_features(spec: layout_lib.LayoutSpec, t: Dict, user_row: tf.Tensor,
                  history_end: tf.Tensor) -> Dict:
    """"user_row", "user_<name>" int64 [b] (0 for user_row -1) and "user_history" ragged int64
    [b, (H <= history_length)]: the user's positives before history_end int64 [b]."""
    has_user = user_row >= 0
    index = tf.where(has_user, user_row, tf.cast(spec.num_users, tf.int64))
    cats = tf.cast(tf.gather(t["user_features"], index), tf.int64)
    out = {"user_row": user_row}
    for j, name in enumerate(layout_lib.feature_columns(spec, "user")):
        out[f"user_{name}"] = cats[:, j]
    splits = t["history_splits"]
    base = tf.gather(splits, tf.minimum(tf.maximum(user_row, 0), tf.shape(splits, tf.int64)[0] - 1))
    end = base + history_end
    start = tf.maximum(base, end - spec.history_length)
    start = tf.where(has_user, start, end)
    positions = tf.ragged.range(start, end)
    history = tf.cast(tf.gather(t["history_items"], positions.flat_values), tf.int64)
    out["user_history"] = tf.RaggedTensor.from_row_splits(history, positions.row_splits,
                                                          validate=False)
    return out


def query_features(t: Dict, query_row: tf.Tensor) -> Dict:
    """"query" string [b], "query_row", "query_tokens" ragged int64 [b, (Lq)] of the query rows
    int64 [b] (and their click-graph lists when the layout has a graph)."""
    out = {"query": tf.gather(t["query_texts"], query_row),
           "query_row": query_row,
           "query_tokens": _gather_tokens(t, "query", query_row)}
    out.update(_graph_features(t, "query", query_row, "query"))
    return out


def _per_query_negatives(spec: layout_lib.LayoutSpec, t: Dict, query_row: tf.Tensor,
                         cap: int, seed: tf.Tensor, kind: str = "human") -> Dict:
    """The negatives of each example's query from a per-query table, at most `cap` per example:
    kind "human": the layout's human negatives (§4.5); "hard": the mined hard negatives.

    A query with count > cap negatives contributes `cap` of them, cyclically consecutive from a
    uniform random offset (a different draw each batch): each of its negatives is joined with
    probability cap / count.

    Returns:
      "<kind>_negative_rows" ragged int64 [B, (h <= cap)] and "<kind>_negative_item_*" features
      of its flat rows.
    """
    splits = t[f"{kind}_negative_splits"]
    start = tf.gather(splits, query_row)
    count = tf.gather(splits, query_row + 1) - start
    offset = tf.cast(tf.floor(tf.random.stateless_uniform(tf.shape(count), seed=seed) *
                              tf.cast(count, tf.float32)), tf.int64)
    offset = tf.minimum(offset, tf.maximum(count - 1, 0))
    slots = tf.ragged.range(tf.minimum(count, cap))                      # [B, (h)] 0..h-1
    row = slots.value_rowids()
    positions = tf.gather(start, row) + tf.math.floormod(
        slots.flat_values + tf.gather(offset, row), tf.maximum(tf.gather(count, row), 1))
    rows = tf.cast(tf.gather(t[f"{kind}_negative_items"], positions), tf.int64)
    out = {f"{kind}_negative_rows": tf.RaggedTensor.from_row_splits(
        rows, slots.row_splits, validate=False)}
    out.update(item_features(spec, t, rows, f"{kind}_negative_item"))
    return out


def record_join(spec: layout_lib.LayoutSpec, num_random_negatives: int, seed: int,
                static_batch: int = -1, human_negatives: int = 0, hard_negatives: int = 0):
    """join(raw, batch_index, tables): a batch of raw records (string [b], RECORD_DTYPE bytes)
    -> the training features of dpsr_tf/data/pipeline.py. Random negatives are drawn per batch
    from (seed, batch_index); static_batch: b when every batch is full, else -1."""
    num_items = spec.num_items

    def join(raw: tf.Tensor, batch_index: tf.Tensor, t: Dict) -> Dict:
        rec = tf.io.decode_raw(raw, tf.int32, little_endian=True)
        rec = tf.reshape(rec, [static_batch, _NUM_FIELDS])
        query_row = tf.cast(rec[:, 0], tf.int64)
        item_row = tf.cast(rec[:, 1], tf.int64)
        user_row = tf.cast(rec[:, 2], tf.int64)
        history_end = tf.cast(rec[:, 3], tf.int64)
        label_kind = rec[:, 4]
        features = query_features(t, query_row)
        features.update(user_features(spec, t, user_row, history_end))
        features.update(item_features(spec, t, item_row, "item"))
        features = _hide_pair_edges(features, t)
        features["label"] = tf.cast(tf.not_equal(label_kind, 2), tf.float32)
        features["gain"] = tf.bitcast(rec[:, 5], tf.float32)
        neg = tf.random.stateless_uniform(
            [num_random_negatives], seed=tf.stack([tf.constant(seed, tf.int64), batch_index]),
            minval=0, maxval=num_items, dtype=tf.int64)
        features.update(item_features(spec, t, neg, "neg_item"))
        if human_negatives > 0:
            features.update(_per_query_negatives(
                spec, t, query_row, human_negatives,
                tf.stack([tf.constant(seed + 1, tf.int64), batch_index])))
        if hard_negatives > 0:
            features.update(_per_query_negatives(
                spec, t, query_row, hard_negatives,
                tf.stack([tf.constant(seed + 2, tf.int64), batch_index]), kind="hard"))
        return features

    return join
