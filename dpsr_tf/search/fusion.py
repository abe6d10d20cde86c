"""Fusing the dense (DPSR) and lexical (BM25) result lists of a hybrid servable.

Rules (docs/export.md, "Hybrid recall"):

  rrf    reciprocal rank fusion: fused(item) = sum over the lists holding it of
         weight_list / (rrf_k + rank_in_list), rank 1-based; tied scores share a rank (1 + the
         number of strictly better results in that list), so the fusion does not depend on
         how ties happen to be ordered, and the proxy's re-fusion of shards equals it. Scores
         of the two systems are on different scales; ranks are not. The default: rrf_k = 5,
         dense weight 1, lexical weight 0.5, so DPSR leads and BM25 complements it (a
         lexical-only first hit enters at about dense rank 7; an item in both lists rises).
         Chosen on a catalog where BM25 is strong and one where it is weak, not on one; the
         literature's rrf_k = 60 with equal weights suits only the first (docs/results.md,
         "Hybrid recall").
  blend  normalized score blend: each list's scores are min-max normalized over the row's
         valid entries to [0, 1] (a list whose entries are all equal normalizes to 1), and
         fused = dense_weight * dense_norm + lexical_weight * lexical_norm (0 for a list that
         lacks the item).

The fused list holds each item once, by descending fused score; ties keep the earlier position
in (dense list, then lexical list), so the dense order wins ties. `source` tells where a result
came from: 1 dense only, 2 lexical only, 3 both (SOURCE_NAMES); 0 pads.

fuse_np (NumPy: evaluation, the proxy) and fuse (TensorFlow ops: the servable graph) implement
the same rule in float32 with the same tie order.
"""
import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf import config_json

RULES = ("rrf", "blend")
SOURCE_NAMES = {0: "", 1: "dense", 2: "lexical", 3: "both"}


@dataclasses.dataclass(frozen=True)
class FusionConfig(config_json.OneLineConfig):
    """How a hybrid servable fuses its two lists.

    Attributes:
      rule: "rrf" or "blend".
      rrf_k: the RRF constant (rank offset), > 0.
      dense_weight, lexical_weight: weights of the two lists, >= 0, not both 0.
      lexical_k: lexical results fused per request; 0 = the request's k.
      lexical_min_score: lexical results must score strictly above this BM25 value.
    """
    rule: str = "rrf"
    rrf_k: float = 5.0
    dense_weight: float = 1.0
    lexical_weight: float = 0.5
    lexical_k: int = 0
    lexical_min_score: float = 0.0

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"fusion rule must be one of {RULES}, got {self.rule!r}")
        if not (np.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise ValueError(f"rrf_k must be > 0, got {self.rrf_k}")
        for name in ("dense_weight", "lexical_weight"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.dense_weight == 0 and self.lexical_weight == 0:
            raise ValueError("dense_weight and lexical_weight cannot both be 0")
        if self.lexical_k < 0:
            raise ValueError(f"lexical_k must be >= 0 (0 = the request's k), got "
                             f"{self.lexical_k}")
        if not np.isfinite(self.lexical_min_score):
            raise ValueError(f"lexical_min_score must be finite, got {self.lexical_min_score}")


def tie_ranks_np(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[B, K] float32 competition ranks of lists sorted best first: 1 + the number of valid
    entries scoring strictly higher, so tied entries share a rank whatever their order."""
    key = np.where(valid, -scores.astype(np.float64), np.inf)
    ranks = np.stack([np.searchsorted(row, row, side="left") for row in key]) if len(key) else (
        np.zeros(key.shape, np.int64))
    return (ranks + 1).astype(np.float32)


def _contributions_np(scores: np.ndarray, valid: np.ndarray, weight: float,
                      cfg: FusionConfig) -> np.ndarray:
    """[B, K] float32 fused-score contribution of each entry of one list (0 where invalid)."""
    weight = np.float32(weight)
    if cfg.rule == "rrf":
        out = weight / (np.float32(cfg.rrf_k) + tie_ranks_np(scores, valid))
    else:
        s = np.where(valid, scores, np.nan).astype(np.float32)
        with np.errstate(all="ignore"):
            lo = np.nanmin(np.where(valid.any(1, keepdims=True), s, 0), axis=1, keepdims=True)
            hi = np.nanmax(np.where(valid.any(1, keepdims=True), s, 0), axis=1, keepdims=True)
            span = hi - lo
            norm = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1), np.float32(1))
        out = (weight * norm).astype(np.float32)
    return np.where(valid, out, np.float32(0)).astype(np.float32)


def fuse_np(dense_scores: np.ndarray, dense_ids: np.ndarray, lexical_scores: np.ndarray,
            lexical_ids: np.ndarray, k: int,
            cfg: FusionConfig = FusionConfig()) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fused top k of each row (module docstring).

    Args:
      dense_scores, dense_ids: [B, Kd] the dense list, best first; id -1 (int) or b"" / ""
        (object) pads.
      lexical_scores, lexical_ids: [B, Kl] the lexical list, best first, same padding.
      k: results per row.

    Returns:
      fused scores [B, k] float32 (-inf pads), ids [B, k] (padding as in the inputs), source
      [B, k] int32 (1 dense, 2 lexical, 3 both, 0 padding).
    """
    dense_ids = np.asarray(dense_ids)
    lexical_ids = np.asarray(lexical_ids)
    pad = -1 if dense_ids.dtype != object else dense_ids.dtype.type(b"")

    def valid_of(ids):
        return (ids >= 0) if ids.dtype != object else np.vectorize(bool, otypes=[bool])(ids)

    dv, lv = valid_of(dense_ids), valid_of(lexical_ids)
    dc = _contributions_np(np.asarray(dense_scores, np.float32), dv, cfg.dense_weight, cfg)
    lc = _contributions_np(np.asarray(lexical_scores, np.float32), lv, cfg.lexical_weight, cfg)
    batch = dense_ids.shape[0]
    out_s = np.full([batch, k], -np.inf, np.float32)
    out_i = np.full([batch, k], pad, dtype=dense_ids.dtype)
    out_src = np.zeros([batch, k], np.int32)
    for b in range(batch):
        fused, source, order = {}, {}, []
        for ids, contrib, valid, bit in ((dense_ids[b], dc[b], dv[b], 1),
                                         (lexical_ids[b], lc[b], lv[b], 2)):
            for item, c, ok in zip(ids, contrib, valid):
                if not ok:
                    continue
                if item not in fused:
                    fused[item] = np.float32(0)
                    source[item] = 0
                    order.append(item)
                if not source[item] & bit:  # an item counts once per list
                    fused[item] = np.float32(fused[item] + c)
                    source[item] |= bit
        ranked = sorted(range(len(order)), key=lambda p: (-fused[order[p]], p))[:k]
        for j, p in enumerate(ranked):
            out_s[b, j] = fused[order[p]]
            out_i[b, j] = order[p]
            out_src[b, j] = source[order[p]]
    return out_s, out_i, out_src


def fuse(dense_scores, dense_labels, lexical_scores, lexical_labels, k,
         cfg: FusionConfig = FusionConfig(), dense_heads=None):
    """TensorFlow ops of fuse_np for int64 labels (-1 pads), inside the servable graph.

    Args:
      dense_scores, dense_labels: [B, Kd] float32 / int64, best first.
      lexical_scores, lexical_labels: [B, Kl] float32 / int64, best first.
      k: int32 scalar tensor (or int); the output has min(k, Kd + Kl) columns.
      dense_heads: optional [B, Kd] int32 head of each dense entry.

    Returns:
      dict of [B, k] tensors: scores (float32 fused, -inf pads), labels (int64, -1 pads),
      source (int32: 1 dense, 2 lexical, 3 both, 0 pads), dense_scores and lexical_scores
      (float32, each list's own score of the item, -inf where it lacks it), heads (int32 dense
      head, -1 for lexical-only results and padding; only with dense_heads).
    """
    def contributions(scores, labels, weight):
        valid = labels >= 0
        if cfg.rule == "rrf":
            # Competition ranks (tie_ranks_np): lists are sorted best first, padding last.
            key = tf.where(valid, -scores, tf.fill(tf.shape(scores), np.inf))
            ranks = tf.cast(tf.searchsorted(key, key, side="left") + 1, tf.float32)
            denominator = tf.constant(cfg.rrf_k, tf.float32) + ranks
            # fuse_np's float32 quotient, bit for bit: the float64 quotient of the same float32
            # operands rounded once to float32 is the correctly rounded float32 quotient. (A
            # float32 division in the loaded servable came out 1 ulp low, which broke the tie of
            # the default weights' dense rank 7 and lexical rank 1 the other way.)
            out = tf.cast(tf.constant(np.float32(weight), tf.float64)
                          / tf.cast(denominator, tf.float64), tf.float32)
        else:
            big = tf.constant(np.finfo(np.float32).max, tf.float32)
            lo = tf.reduce_min(tf.where(valid, scores, big), axis=1, keepdims=True)
            hi = tf.reduce_max(tf.where(valid, scores, -big), axis=1, keepdims=True)
            span = hi - lo
            safe = tf.where(span > 0, span, tf.ones_like(span))
            norm = tf.where(span > 0, (scores - lo) / safe, tf.ones_like(scores))
            out = tf.constant(weight, tf.float32) * norm
        return tf.where(valid, out, tf.zeros_like(out)), valid

    dc, dv = contributions(dense_scores, dense_labels, cfg.dense_weight)
    lc, lv = contributions(lexical_scores, lexical_labels, cfg.lexical_weight)
    labels = tf.concat([dense_labels, lexical_labels], axis=1)               # [B, P]
    contrib = tf.concat([dc, lc], axis=1)
    valid = tf.concat([dv, lv], axis=1)
    bits = tf.concat([tf.fill(tf.shape(dense_labels), 1), tf.fill(tf.shape(lexical_labels), 2)],
                     axis=1)
    batch, width = tf.shape(labels)[0], tf.shape(labels)[1]
    # One segment per (row, label); padding of every row shares one segment per row that is
    # masked out below. Keys fit int64: labels < 2^62 (FAISS labels, shard rows).
    rows = tf.cast(tf.range(batch)[:, tf.newaxis], tf.int64)
    keys = tf.reshape(tf.where(valid, labels, -1) * tf.cast(batch, tf.int64) + rows, [-1])
    _, segment = tf.unique(keys, out_idx=tf.int32)
    num = tf.reduce_max(segment) + 1
    flat_contrib = tf.reshape(contrib, [-1])
    fused = tf.math.unsorted_segment_sum(flat_contrib, segment, num)
    source = tf.math.unsorted_segment_sum(tf.reshape(bits, [-1]), segment, num)
    positions = tf.range(tf.size(keys))
    first = tf.math.unsorted_segment_min(positions, segment, num)
    is_first = tf.equal(tf.gather(first, segment), positions)
    keep = tf.logical_and(is_first, tf.reshape(valid, [-1]))
    neg_inf = tf.constant(-np.inf, tf.float32)
    ranked = tf.reshape(tf.where(keep, tf.gather(fused, segment), neg_inf), [batch, width])
    k = tf.minimum(tf.cast(k, tf.int32), width)
    top, pos = tf.math.top_k(ranked, k=k, sorted=True)  # ties: lower position first
    found = tf.math.is_finite(top)

    def per_item(values, part, pad):
        """Each output's value from the entry of one list (segment max), pad where absent."""
        flat = tf.reshape(tf.where(part, values, pad), [-1])
        # segment_max starts from the dtype's lowest value, not -inf: track presence apart.
        best = tf.math.unsorted_segment_max(flat, segment, num)
        has = tf.math.unsorted_segment_max(tf.reshape(tf.cast(part, tf.int32), [-1]), segment,
                                           num) > 0
        best = tf.where(has, best, tf.fill(tf.shape(best), tf.cast(pad, best.dtype)))
        out = tf.gather(tf.reshape(tf.gather(best, segment), [batch, width]), pos, batch_dims=1)
        return tf.where(found, out, pad)

    in_dense = tf.concat([dv, tf.zeros_like(lv)], axis=1)
    in_lexical = tf.concat([tf.zeros_like(dv), lv], axis=1)
    all_scores = tf.concat([dense_scores, lexical_scores], axis=1)
    out = {
        "scores": top,
        "labels": tf.where(found, tf.gather(labels, pos, batch_dims=1),
                           tf.constant(-1, tf.int64)),
        "source": tf.where(found, tf.gather(tf.reshape(tf.gather(source, segment),
                                                   [batch, width]), pos, batch_dims=1), 0),
        "dense_scores": per_item(all_scores, in_dense, neg_inf),
        "lexical_scores": per_item(all_scores, in_lexical, neg_inf),
    }
    if dense_heads is not None:
        heads = tf.concat([tf.cast(dense_heads, tf.int32),
                           tf.fill(tf.shape(lexical_labels), -1)], axis=1)
        out["heads"] = per_item(heads, in_dense, -1)
    return out


def refuse_np(dense_scores: np.ndarray, lexical_scores: np.ndarray,
              cfg: FusionConfig) -> np.ndarray:
    """Fused scores of pooled entries from several shards (the proxy's merge).

    Each entry carries its dense and lexical scores (-inf where that list lacks it); the lists
    are re-ranked over the pool (by score, stable in pool order) and fused by the rule, so a
    sharded catalog fuses its global lists, not each shard's.

    Args:
      dense_scores, lexical_scores: [B, P] float32 per pooled entry (ids unique per row).

    Returns:
      [B, P] float32 fused scores (-inf for entries in neither list).
    """
    out = np.zeros(dense_scores.shape, np.float32)
    present = np.zeros(dense_scores.shape, bool)
    for scores, weight in ((dense_scores, cfg.dense_weight), (lexical_scores, cfg.lexical_weight)):
        scores = np.asarray(scores, np.float32)
        valid = np.isfinite(scores)
        order = np.argsort(np.where(valid, -scores.astype(np.float64), np.inf), axis=1,
                           kind="stable")
        ranked_scores = np.take_along_axis(scores, order, 1)
        ranked_valid = np.take_along_axis(valid, order, 1)
        contrib = _contributions_np(ranked_scores, ranked_valid, weight, cfg)
        back = np.zeros_like(contrib)
        np.put_along_axis(back, order, contrib, 1)  # back to pool order
        out += back
        present |= valid
    return np.where(present, out, np.float32(-np.inf)).astype(np.float32)
