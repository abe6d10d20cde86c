"""Fusing a servable's ranked list with a pretrained sentence encoder's list (the encoder list).

A model trained from a log learns the catalog's words; a pretrained encoder knows the
language's. The two miss different items, so the served list (dense, or dense fused with BM25)
is fused once more with the encoder's own nearest items, by weighted reciprocal rank:

  fused(item) = 1 / (rrf_k + rank_served) + weight / (rrf_k + rank_encoder)

ranks 1-based positions in each list; a list that lacks the item adds nothing. The fused list
holds each item once, by descending fused score; ties keep the earlier position in (the served
list, then the encoder list), so the served order wins ties. An item only the encoder found has
source "encoder" and no served outputs (-inf scores, head -1).

fuse_np (NumPy: evaluation, the export's choice) and fuse (TensorFlow ops: the servable graph)
implement the same rule in float32 with the same tie order.
"""
import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf import config_json


@dataclasses.dataclass(frozen=True)
class EncoderFusionConfig(config_json.OneLineConfig):
    """Attributes:
      weight: the encoder list's weight against the served list's 1; 0 = no encoder list.
      rrf_k: the reciprocal-rank constant, > 0.
    """
    weight: float = 0.0
    rrf_k: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def validate(self) -> None:
        if isinstance(self.weight, bool) or not (np.isfinite(self.weight)
                                                 and 0 <= self.weight <= 100):
            raise ValueError(f"encoder weight must be in [0, 100] (0 = no encoder list), got "
                             f"{self.weight}")
        if isinstance(self.rrf_k, bool) or not (np.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise ValueError(f"encoder rrf_k must be > 0, got {self.rrf_k}")

    def describe(self) -> str:
        return (f"encoder list weight {self.weight:g} (rrf k={self.rrf_k:g})" if self.enabled
                else "no encoder list")


def fuse_np(served_rows: np.ndarray, encoder_rows: np.ndarray, k: int,
            cfg: EncoderFusionConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The module docstring's rule, one row at a time.

    Args:
      served_rows: [B, K] int item rows (labels) of the served list, best first, -1 pads.
      encoder_rows: [B, E] int item rows of the encoder list, best first, -1 pads.
      k: the fused list's length.

    Returns:
      scores [B, k] float32 (-inf pads), rows [B, k] int64 (-1 pads), and served_at [B, k]
      int64: the position of each result in the served list, -1 for an encoder-only result.
    """
    served_rows, encoder_rows = np.asarray(served_rows), np.asarray(encoder_rows)
    b = served_rows.shape[0]
    scores = np.full([b, k], -np.inf, np.float32)
    rows = np.full([b, k], -1, np.int64)
    served_at = np.full([b, k], -1, np.int64)
    rrf_k, weight = np.float32(cfg.rrf_k), np.float32(cfg.weight)
    for i in range(b):
        fused, at = {}, {}
        for pos, row in enumerate(served_rows[i]):
            if row >= 0 and row not in fused:
                fused[row] = np.float32(1) / (rrf_k + np.float32(pos + 1))
                at[row] = pos
        seen = set()
        for pos, row in enumerate(encoder_rows[i]):
            if row < 0 or row in seen:
                continue
            seen.add(row)
            gain = weight / (rrf_k + np.float32(pos + 1))
            fused[row] = np.float32(fused[row] + gain) if row in fused else gain
        # dict order = first appearance (served list, then encoder list); a stable sort keeps it
        ranked = sorted(fused.items(), key=lambda t: -t[1])[:k]
        for j, (row, score) in enumerate(ranked):
            rows[i, j], scores[i, j], served_at[i, j] = row, score, at.get(row, -1)
    return scores, rows, served_at


def _first_match(sorted_values, order, wanted):
    """For each wanted value [B, n]: whether it is in the row's sorted_values [B, m], and the
    position (in the unsorted list) of its first occurrence there."""
    last = tf.maximum(tf.shape(sorted_values)[1] - 1, 0)
    at = tf.minimum(tf.searchsorted(sorted_values, wanted, side="left"), last)
    found = tf.equal(tf.gather(sorted_values, at, batch_dims=1), wanted)
    return found, tf.gather(order, at, batch_dims=1)


def fuse(served_labels, encoder_labels, k, cfg: EncoderFusionConfig,
         with_encoder_at: bool = False):
    """fuse_np in graph ops.

    Args:
      served_labels: [B, K] int64 labels of the served list, best first, -1 pads (no repeats).
      encoder_labels: [B, E] int64 labels of the encoder list, best first, -1 pads.
      k: scalar int32, the fused list's length (at most K + E are returned).

    Returns:
      scores [B, k'] float32 (-inf pads), labels [B, k'] int64 (-1 pads), served_at [B, k']
      int32 (position in the served list, -1 for encoder-only), k' = min(k, K + E); with
      with_encoder_at also encoder_at [B, k'] int32, each result's first position in the
      encoder list (-1 where the encoder list lacks it).
    """
    with tf.name_scope("encoder_fusion"):
        served_labels = tf.cast(served_labels, tf.int64)
        encoder_labels = tf.cast(encoder_labels, tf.int64)
        n_served = tf.shape(served_labels)[1]
        n_encoder = tf.shape(encoder_labels)[1]
        rrf_k = tf.constant(cfg.rrf_k, tf.float32)

        def gains(n, weight):
            return tf.constant(weight, tf.float32) / (rrf_k + tf.cast(tf.range(1, n + 1),
                                                                      tf.float32))
        served_gain = tf.broadcast_to(gains(n_served, 1.0)[None, :], tf.shape(served_labels))
        encoder_gain = tf.broadcast_to(gains(n_encoder, cfg.weight)[None, :],
                                       tf.shape(encoder_labels))
        served_valid = served_labels >= 0
        encoder_valid = encoder_labels >= 0

        # An encoder entry counts once: its first position (a stable sort keeps list order).
        enc_order = tf.argsort(encoder_labels, axis=1, stable=True)
        enc_sorted = tf.gather(encoder_labels, enc_order, batch_dims=1)
        first_in_enc, enc_first = _first_match(enc_sorted, enc_order, encoder_labels)
        enc_first_pos = tf.logical_and(first_in_enc, tf.equal(
            enc_first, tf.range(n_encoder)[None, :]))

        # Served items gain the encoder's share where the encoder list holds them.
        found, enc_at = _first_match(enc_sorted, enc_order, served_labels)
        found = tf.logical_and(found, served_valid)
        served_score = served_gain + tf.where(
            found, tf.gather(encoder_gain, enc_at, batch_dims=1), 0.0)
        served_score = tf.where(served_valid, served_score, -np.inf)

        # Encoder items the served list lacks enter on their own share.
        srv_order = tf.argsort(served_labels, axis=1, stable=True)
        srv_sorted = tf.gather(served_labels, srv_order, batch_dims=1)
        in_served, _ = _first_match(srv_sorted, srv_order, encoder_labels)
        encoder_only = tf.logical_and(tf.logical_and(encoder_valid, enc_first_pos),
                                      tf.logical_not(in_served))
        encoder_score = tf.where(encoder_only, encoder_gain, -np.inf)

        all_scores = tf.concat([served_score, encoder_score], axis=1)
        all_labels = tf.concat([served_labels, encoder_labels], axis=1)
        take = tf.minimum(tf.cast(k, tf.int32), n_served + n_encoder)
        top_scores, top_at = tf.math.top_k(all_scores, take, sorted=True)  # ties: lower index
        present = top_scores > -np.inf
        labels = tf.where(present, tf.gather(all_labels, top_at, batch_dims=1),
                          tf.constant(-1, tf.int64))
        served_at = tf.where(tf.logical_and(present, top_at < n_served), top_at, -1)
        if not with_encoder_at:
            return top_scores, labels, served_at
        in_encoder, encoder_at = _first_match(enc_sorted, enc_order, labels)
        encoder_at = tf.where(tf.logical_and(in_encoder, present), encoder_at, -1)
        return top_scores, labels, served_at, encoder_at
