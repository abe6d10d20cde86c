"""Merging the lexical lists of a query and of its rewrites into one lexical list.

Rule (docs/rewriting.md, "Serving"): the lexical list of a query with rewrites r_1..r_R is the
top n of the union of the query's own BM25 list and each rewrite's BM25 list (each n long),
where an item scores, over the lists that hold it (a list that lacks it adds nothing),

    combine "max":  merged(item) = max(bm25(query, item), rewrite_weight * max_j bm25(r_j, item))
    combine "sum":  merged(item) = bm25(query, item) + rewrite_weight * sum_j bm25(r_j, item)
    combine "capped": as "max", with rewrite j's factor rewrite_weight * min(1, top_q / top_j)
        (top_q, top_j: the best score of the query's list and of r_j's list; rewrite_weight
        alone when the query's list is empty)

("sum" is query expansion: an item that the query and its rewrites agree on rises; float32,
summed in list order. "capped" bounds drift: a rewrite's best hit scores at most
rewrite_weight times the query's own best, so a long rewrite with many matching terms, whose
raw BM25 is far above the query's, cannot push the query's own hits down; a query with no
hits of its own takes its rewrites' lists as "max" does.) Ties keep the earlier position in
(the query's list, r_1's list, ..., r_R's list). `from_query` says whether the query's own list
holds the item; the servable reports an item that only a rewrite's list found as source
"rewrite" when the dense list lacks it too. A query without rewrites keeps its own list unchanged.

merge_np (NumPy: evaluation) and merge (TensorFlow: the servable graph) implement the same
rule in float32 with the same tie order.
"""
import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf


COMBINES = ("max", "sum", "capped")


@dataclasses.dataclass(frozen=True)
class RewriteConfig:
    """How a servable uses its rewrite table.

    Attributes:
      max_rewrites: rewrites of a query searched per request (the table's first ones).
      rewrite_weight: factor on a rewrite's BM25 scores, in (0, 1]: below 1 a rewrite's hit
        ranks under an equally scored hit of the query itself.
      combine: "max", "sum" or "capped" (max with each rewrite's factor bounded relative to the
        query's best score) of an item's weighted scores over the lists (module docstring).
    """
    max_rewrites: int = 3
    # Chosen on held-out train queries, confirmed on a second catalog (docs/rewriting.md,
    # "Choosing the settings (held-out train queries)").
    rewrite_weight: float = 0.05
    combine: str = "sum"

    def validate(self) -> None:
        if not 1 <= self.max_rewrites <= 16:
            raise ValueError(f"max_rewrites must be in [1, 16], got {self.max_rewrites}")
        if not (np.isfinite(self.rewrite_weight) and 0 < self.rewrite_weight <= 1):
            raise ValueError(f"rewrite_weight must be in (0, 1], got {self.rewrite_weight}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")


def _factor_np(query_scores, query_rows, scores, rows, w: np.float32, combine: str):
    """The factor on one rewrite list's scores (float32, as `merge` computes it)."""
    if combine != "capped":
        return w
    top_q = query_scores[query_rows >= 0].max(initial=-np.inf)
    top_r = scores[rows >= 0].max(initial=-np.inf)
    if not (np.isfinite(top_q) and np.isfinite(top_r) and top_r > 0):
        return w
    return np.float32(w * np.minimum(np.float32(1), np.float32(top_q) / np.float32(top_r)))


def merge_np(query_scores: np.ndarray, query_rows: np.ndarray, rewrite_scores: np.ndarray,
             rewrite_rows: np.ndarray, n: int, weight: float,
             combine: str = "max") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged lexical list of each query (module docstring).

    Args:
      query_scores, query_rows: [B, K] the query's own list, best first, -1 pads rows.
      rewrite_scores, rewrite_rows: [B, R, K] each rewrite's list (-1 pads; a query with
        fewer rewrites pads whole lists).
      n: the merged list's length.
      weight: rewrite_weight.
      combine: "max", "sum" or "capped".

    Returns:
      scores [B, n] float32 (-inf pads), rows [B, n] int64 (-1 pads), from_query [B, n] bool.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    batch = query_rows.shape[0]
    w = np.float32(weight)
    out_s = np.full([batch, n], -np.inf, np.float32)
    out_r = np.full([batch, n], -1, np.int64)
    out_q = np.zeros([batch, n], bool)
    for b in range(batch):
        best, own, order = {}, set(), []
        lists = [(query_scores[b], query_rows[b], np.float32(1), True)]
        lists += [(rewrite_scores[b, j], rewrite_rows[b, j],
                   _factor_np(query_scores[b], query_rows[b], rewrite_scores[b, j],
                              rewrite_rows[b, j], w, combine), False)
                  for j in range(rewrite_rows.shape[1])]
        for scores, rows, factor, is_query in lists:
            for s, r in zip(scores, rows):
                if r < 0:
                    continue
                value = np.float32(np.float32(s) * factor)
                if r not in best:
                    best[r] = value
                    order.append(r)
                elif combine == "sum":
                    best[r] = np.float32(best[r] + value)
                elif value > best[r]:
                    best[r] = value
                if is_query:
                    own.add(r)
        ranked = sorted(range(len(order)), key=lambda p: (-best[order[p]], p))[:n]
        for j, p in enumerate(ranked):
            out_s[b, j], out_r[b, j] = best[order[p]], order[p]
            out_q[b, j] = order[p] in own
    return out_s, out_r, out_q


def merge(query_scores, query_labels, rewrite_scores, rewrite_labels, n, weight: float,
          combine: str = "max"):
    """TensorFlow ops of merge_np for int64 labels (-1 pads), inside the servable graph.

    Args:
      query_scores, query_labels: [B, K] float32 / int64.
      rewrite_scores, rewrite_labels: [B, R, K] float32 / int64.
      n: int32 scalar (or int); the output has min(n, K * (R + 1)) columns.
      combine: "max", "sum" or "capped" (unsorted_segment_sum adds a segment's values in
        input order, the list order of merge_np, so float32 sums are the same).

    Returns:
      (scores [B, n] float32 -inf pads, labels [B, n] int64 -1 pads, from_query [B, n] bool).
    """
    batch = tf.shape(query_labels)[0]
    w = tf.constant(weight, tf.float32)
    neg_inf = tf.constant(-np.inf, tf.float32)
    if combine == "capped":
        top_q = tf.reduce_max(tf.where(query_labels >= 0, query_scores, neg_inf), axis=1)  # [B]
        top_r = tf.reduce_max(tf.where(rewrite_labels >= 0, rewrite_scores, neg_inf), axis=2)
        usable = tf.logical_and(tf.math.is_finite(top_q)[:, tf.newaxis],
                                tf.logical_and(tf.math.is_finite(top_r), top_r > 0))
        ratio = tf.minimum(1.0, top_q[:, tf.newaxis] / tf.where(usable, top_r, 1.0))
        factor = tf.where(usable, w * ratio, w)                                       # [B, R]
        scaled = rewrite_scores * factor[:, :, tf.newaxis]
    else:
        scaled = rewrite_scores * w
    labels = tf.concat([query_labels, tf.reshape(rewrite_labels, [batch, -1])], axis=1)
    scores = tf.concat([query_scores, tf.reshape(scaled, [batch, -1])], axis=1)
    is_query = tf.concat([tf.ones_like(query_labels, tf.bool),
                          tf.zeros_like(tf.reshape(rewrite_labels, [batch, -1]), tf.bool)],
                         axis=1)
    valid = labels >= 0
    width = tf.shape(labels)[1]
    rows = tf.cast(tf.range(batch)[:, tf.newaxis], tf.int64)
    keys = tf.reshape(tf.where(valid, labels, -1) * tf.cast(batch, tf.int64) + rows, [-1])
    _, segment = tf.unique(keys, out_idx=tf.int32)
    num = tf.reduce_max(segment) + 1
    flat_valid = tf.reshape(valid, [-1])
    flat_scores = tf.where(flat_valid, tf.reshape(scores, [-1]), neg_inf)
    if combine in ("max", "capped"):
        best = tf.math.unsorted_segment_max(flat_scores, segment, num)
    elif combine == "sum":
        best = tf.math.unsorted_segment_sum(
            tf.where(flat_valid, flat_scores, tf.zeros_like(flat_scores)), segment, num)
    else:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    own = tf.math.unsorted_segment_max(
        tf.reshape(tf.cast(tf.logical_and(is_query, valid), tf.int32), [-1]), segment, num) > 0
    positions = tf.range(tf.size(keys))
    first = tf.math.unsorted_segment_min(positions, segment, num)
    keep = tf.logical_and(tf.equal(tf.gather(first, segment), positions), flat_valid)
    ranked = tf.reshape(tf.where(keep, tf.gather(best, segment), neg_inf), [batch, width])
    n = tf.minimum(tf.cast(n, tf.int32), width)
    top, pos = tf.math.top_k(ranked, k=n, sorted=True)  # ties: lower position first
    found = tf.math.is_finite(top)
    out_labels = tf.where(found, tf.gather(labels, pos, batch_dims=1), tf.constant(-1, tf.int64))
    from_query = tf.gather(tf.reshape(tf.gather(own, segment), [batch, width]), pos,
                           batch_dims=1)
    return top, out_labels, tf.logical_and(found, from_query)
