"""Merging the per-head search results of the multi-head query tower, in-graph (DPSR §4.3).

Each of the m query heads retrieves its own top k from the index; the servable returns one
list: all m*k candidates sorted by their inner product, an item found by several heads kept
once with its best score and the head that gave it.

merge_heads is the in-graph version (one Dpsr>MergeHeads op, search_cc/core/head_merge.h);
merge_heads_np is its NumPy twin for offline evaluation (`dpsr evaluate --served`), equal to it
on ids, scores, heads and tie order (tests/search/test_head_merge.py).
"""
import numpy as np
import tensorflow as tf

from dpsr_tf import op_library


def merge_heads(scores: tf.Tensor, labels: tf.Tensor, k):
    """Merges, deduplicates and truncates the results of m heads: one Dpsr>MergeHeads op
    (search_cc/core/head_merge.h; about a hundred TF ops did this before, half a millisecond
    of CPU per query).

    Args:
      scores: [B, m, n] float32 inner products of each head's hits (padding: any value).
      labels: [B, m, n] int64 index labels; -1 marks padding (fewer than n hits).
      k: int32 scalar (int or tensor), how many results to return per query (k <= m * n).

    Returns:
      scores [B, k] float32 sorted descending, labels [B, k] int64 and heads [B, k] int32 (the
      head whose search found the item with that score). Rows with fewer than k distinct items
      are padded with label -1, score -inf and head -1. Equal scores keep their head-major
      position order; a NaN score ranks as -inf.
    """
    return op_library.load().dpsr_merge_heads(
        tf.convert_to_tensor(scores, tf.float32), tf.convert_to_tensor(labels, tf.int64),
        tf.cast(k, tf.int32), name="merge_heads")


def _head_lists_np(scores, labels):
    """scores float32 and labels int64, both [batch, heads, n].

    Raises:
      ValueError: shapes that differ or are not rank 3.
    """
    scores = np.asarray(scores, np.float32)
    labels = np.asarray(labels, np.int64)
    if scores.ndim != 3 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [batch, heads, n], got shapes "
                         f"{scores.shape} and {labels.shape}")
    return scores, labels


def merge_heads_np(scores: np.ndarray, labels: np.ndarray, k: int):
    """NumPy twin of merge_heads: the same outputs, ties broken the same way (lower position in
    the head-major [m * n] row first, as TF's stable argsort and top_k do).

    Args:
      scores: [B, m, n] float32 inner products of each head's hits (padding: any value).
      labels: [B, m, n] int64 index labels; -1 marks padding.
      k: results per query, 1 <= k <= m * n.

    Returns:
      scores [B, k] float32, labels [B, k] int64, heads [B, k] int32, padded as merge_heads
      (a NaN score ranks as -inf).

    Raises:
      ValueError: shapes that differ or are not rank 3, or k out of range.
    """
    scores, labels = _head_lists_np(scores, labels)
    batch, m, n = scores.shape
    if not 1 <= k <= m * n:
        raise ValueError(f"k must be in [1, heads * n] = [1, {m * n}], got {k}")
    flat_s = np.where((labels >= 0) & ~np.isnan(scores), scores, -np.inf).reshape(batch, m * n)
    flat_l = labels.reshape(batch, m * n)
    flat_h = np.broadcast_to(np.arange(m, dtype=np.int32)[None, :, None],
                             (batch, m, n)).reshape(batch, m * n)
    order = np.argsort(-flat_s, axis=1, kind="stable")
    s = np.take_along_axis(flat_s, order, axis=1)
    l = np.take_along_axis(flat_l, order, axis=1)
    h = np.take_along_axis(flat_h, order, axis=1)
    # First occurrence of each (row, label) in best-first order.
    stride = max(int(l.max(initial=-1)), 0) + 2
    pair = (np.arange(batch, dtype=np.int64)[:, None] * stride + l + 1).reshape(-1)
    keep = np.zeros(pair.shape, bool)
    keep[np.unique(pair, return_index=True)[1]] = True
    keep = keep.reshape(l.shape) & (l >= 0)
    s = np.where(keep, s, -np.inf).astype(np.float32)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_keep = np.take_along_axis(keep, top, axis=1)
    return (np.take_along_axis(s, top, axis=1),
            np.where(top_keep, np.take_along_axis(l, top, axis=1), -1).astype(np.int64),
            np.where(top_keep, np.take_along_axis(h, top, axis=1), -1).astype(np.int32))


def check_min_share(min_share: float, num_heads: int) -> None:
    """Raises ValueError unless 0 <= min_share <= 1 / num_heads."""
    if not 0.0 <= min_share <= 1.0 / max(1, num_heads) + 1e-9:
        raise ValueError(f"head_min_share must be in [0, 1/heads] = [0, {1.0 / num_heads:.4g}] "
                         f"with {num_heads} heads, got {min_share}")


def quota_of(k, min_share: float):
    """Slots each head is guaranteed in a list of k: floor(min_share * k) (int or int32 tensor)."""
    if isinstance(k, int):
        return int(np.floor(min_share * k + 1e-6))
    return tf.cast(tf.floor(tf.cast(k, tf.float32) * min_share + 1e-6), tf.int32)


def merge_heads_quota(scores: tf.Tensor, labels: tf.Tensor, k: tf.Tensor, min_share: float):
    """merge_heads with a per-head quota: each head keeps its own best floor(min_share * k)
    items in the list, so a head whose scores run lower (another sense of the query) is not
    crowded out by the other heads; the other slots go to the best remaining items. The list
    is sorted by score, an item found by several heads is credited to the head with its best
    score (as merge_heads), and min_share = 0 is merge_heads.

    Args:
      scores, labels, k: as merge_heads.
      min_share: in [0, 1 / m].

    Returns:
      scores [B, k], labels [B, k], heads [B, k], padded as merge_heads.
    """
    if min_share == 0:
        return merge_heads(scores, labels, k)
    batch = tf.shape(scores)[0]
    m = tf.shape(scores)[1]
    n = tf.shape(scores)[2]
    width = m * n
    # The full deduplicated best-first order: merge_heads with k = m * n.
    s, l, h = merge_heads(scores, labels, width)
    kept = l >= 0
    # Rank of each kept entry among its head's kept entries (0 = the head's best).
    one_hot = tf.cast(tf.one_hot(tf.maximum(h, 0), m), tf.int32) * tf.cast(kept, tf.int32)[
        :, :, None]
    rank_in_head = tf.reduce_sum((tf.cumsum(one_hot, axis=1) - 1) * one_hot, axis=2)
    guaranteed = kept & (rank_in_head < quota_of(k, min_share))
    # Selection key: guaranteed entries first, then the rest best-first, padding last.
    positions = tf.broadcast_to(tf.range(width)[None, :], [batch, width])
    key = tf.where(guaranteed, positions,
                   tf.where(kept, positions + width, positions + 2 * width))
    _, chosen = tf.math.top_k(-key, k=k, sorted=True)
    # Back to best-first order (positions are best-first), padding at the end.
    chosen = tf.sort(tf.where(tf.gather(kept, chosen, batch_dims=1), chosen, chosen + width),
                     axis=1)
    chosen = tf.math.floormod(chosen, width)
    return (tf.gather(s, chosen, batch_dims=1), tf.gather(l, chosen, batch_dims=1),
            tf.gather(h, chosen, batch_dims=1))


def merge_heads_quota_np(scores: np.ndarray, labels: np.ndarray, k: int, min_share: float):
    """Reference of merge_heads_quota, one query at a time: merge_heads_np's deduplicated list
    (the whole of it), each head's first floor(min_share * k) entries taken, then the best
    remaining entries up to k, all in best-first order.

    Returns:
      scores [B, k] float32, labels [B, k] int64, heads [B, k] int32, padded as merge_heads_np.
    """
    scores, labels = _head_lists_np(scores, labels)
    batch, m, n = scores.shape
    check_min_share(min_share, m)
    if not 1 <= k <= m * n:
        raise ValueError(f"k must be in [1, heads * n] = [1, {m * n}], got {k}")
    full_s, full_l, full_h = merge_heads_np(scores, labels, m * n)
    quota = quota_of(k, min_share)
    out_s = np.full([batch, k], -np.inf, np.float32)
    out_l = np.full([batch, k], -1, np.int64)
    out_h = np.full([batch, k], -1, np.int32)
    for b in range(batch):
        entries = [i for i in range(m * n) if full_l[b, i] >= 0]
        taken, per_head = [], [0] * m
        for i in entries:
            if per_head[full_h[b, i]] < quota:
                per_head[full_h[b, i]] += 1
                taken.append(i)
        chosen = set(taken)
        for i in entries:
            if len(taken) >= k:
                break
            if i not in chosen:
                taken.append(i)
        taken = sorted(taken)[:k]
        out_s[b, :len(taken)] = full_s[b, taken]
        out_l[b, :len(taken)] = full_l[b, taken]
        out_h[b, :len(taken)] = full_h[b, taken]
    return out_s, out_l, out_h
