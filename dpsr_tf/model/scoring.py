"""The soft dot product of DPSR (paper §4.3): attention over the query heads.

For query heads e_1..e_m and an item embedding g:
    w_i = exp(e_i.g / beta) / sum_j exp(e_j.g / beta)
    score(q, g) = sum_i w_i * (e_i.g)
beta -> 0 gives max_i e_i.g (the head that matches best); beta -> inf gives the mean.
"""
import numpy as np
import tensorflow as tf


def _is_max(beta) -> bool:
    """beta = 0 as a Python number (a tensor beta, an annealed schedule, is never 0)."""
    return isinstance(beta, (int, float)) and beta == 0


def attention_weights(dots: tf.Tensor, beta: float) -> tf.Tensor:
    """Softmax over the last axis (heads) of dots / beta; beta = 0 gives the one-hot argmax.

    Args:
      dots: [..., m] float32 head-item dot products.
      beta: temperature >= 0.

    Returns:
      [..., m] float32 weights summing to 1.
    """
    if _is_max(beta):
        return tf.one_hot(tf.argmax(dots, axis=-1), tf.shape(dots)[-1], dtype=dots.dtype)
    return tf.nn.softmax(dots / beta, axis=-1)


def _soft_dot(dots: tf.Tensor, beta) -> tf.Tensor:
    if _is_max(beta):
        return tf.reduce_max(dots, axis=-1)
    return tf.reduce_sum(tf.nn.softmax(dots / beta, axis=-1) * dots, axis=-1)


def soft_dot_product(query_heads: tf.Tensor, items: tf.Tensor, beta: float) -> tf.Tensor:
    """Scores every query against every item.

    Args:
      query_heads: [B, m, d] float32 query head embeddings.
      items: [N, d] float32 item embeddings.
      beta: attention temperature >= 0 (a float, or a scalar tensor > 0 while training).

    Returns:
      [B, N] float32 scores.
    """
    dots = tf.einsum("bmd,nd->bnm", query_heads, items)
    return _soft_dot(dots, beta)


def paired_soft_dot_product(query_heads: tf.Tensor, items: tf.Tensor, beta: float) -> tf.Tensor:
    """Scores query b against item b.

    Args:
      query_heads: [B, m, d] float32.
      items: [B, d] float32.
      beta: attention temperature >= 0.

    Returns:
      [B] float32 scores.
    """
    dots = tf.einsum("bmd,bd->bm", query_heads, items)
    return _soft_dot(dots, beta)


def soft_dot_from_dots_np(dots: np.ndarray, beta: float) -> np.ndarray:
    """NumPy twin of the soft dot product over precomputed head-item dot products.

    The one NumPy implementation: soft_dot_product_np and evaluation's pair scores call it.

    Args:
      dots: [..., m] float32 dot products e_i.g of the m heads with one item.
      beta: attention temperature >= 0; 0 (or m = 1) gives the max over heads, which is the
        rule serving ranks by (each head searched, hits merged by best score).

    Returns:
      [...] float32 scores.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    dots = np.asarray(dots, np.float32)
    if dots.shape[-1] == 1:
        return dots[..., 0]
    if beta == 0:
        return dots.max(axis=-1)
    z = dots / np.float32(beta)
    z -= z.max(axis=-1, keepdims=True)
    w = np.exp(z)
    w /= w.sum(axis=-1, keepdims=True)
    return (w * dots).sum(axis=-1)


def soft_dot_product_np(query_heads: np.ndarray, items: np.ndarray, beta: float) -> np.ndarray:
    """NumPy twin of soft_dot_product for evaluation: [Q, m, d] x [N, d] -> [Q, N] float32.

    beta = 0 gives the max over heads, the ranking serving uses.
    """
    dots = np.einsum("qmd,nd->qnm", query_heads.astype(np.float32, copy=False),
                     items.astype(np.float32, copy=False))
    return soft_dot_from_dots_np(dots, beta)
