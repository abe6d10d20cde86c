"""losses.head_win_shares (the train/head_<h>_share_of_positives scalars) and the report's
head_usage, against values worked out by hand."""
import numpy as np
import tensorflow as tf

from dpsr_tf.model import losses
from dpsr_tf.report import heads


def test_head_win_shares_by_hand():
    # 4 examples, 2 heads, d = 2. Own-item dots per head:
    #   ex0: h0 1.0, h1 0.0 -> h0;  ex1: h0 0.0, h1 2.0 -> h1;
    #   ex2: h0 0.5, h1 0.5 -> tie -> h0;  ex3: label 0, not counted (would be h1).
    q = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 0], [0, 1]]],
                 np.float32)
    items = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [0.0, 3.0]], np.float32)
    labels = np.array([1, 1, 1, 0], np.float32)
    shares = losses.head_win_shares(tf.constant(q), tf.constant(items), tf.constant(labels))
    np.testing.assert_allclose(shares.numpy(), [2 / 3, 1 / 3], atol=1e-7)
    none = losses.head_win_shares(tf.constant(q), tf.constant(items), tf.zeros([4]))
    np.testing.assert_allclose(none.numpy(), [0.0, 0.0])


def test_head_usage_by_hand():
    # Request 0 heads: e0 = (1, 0), e1 = (0, 1). Items: r0 (1, 0) -> h0, r1 (0, 1) -> h1,
    # r2 (0.2, 0.9) -> h1. Top-2 results [r0, r2]; clicked r1 -> h1.
    request_heads = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    items = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9]], np.float32)
    usage = heads.head_usage(request_heads, items, np.array([[0, 2]]), np.array([0, 1]),
                             np.array([1]), cuts=(2, 10))
    assert usage["results@2"] == [0.5, 0.5]
    assert "results@10" not in usage          # a cut beyond the ranking is not reported
    assert usage["clicked"] == [0.0, 1.0] and usage["clicked_pairs"] == 1


def test_pick_polysemous_prefers_disagreeing_heads():
    items = np.eye(4, dtype=np.float32)
    agree = [[1, 0, 0, 0], [1, 0, 0, 0]]        # both heads rank item 0 first
    differ = [[1, 0, 0, 0], [0, 0, 0, 1]]       # head 1 ranks item 3 first
    request_heads = np.array([agree, differ, differ], np.float32)
    chosen = heads.pick_polysemous(request_heads, items, ["a", "b", "b"], count=2, k=1)
    assert chosen == [1, 0]                      # "b" once (first request), then "a"
    assert heads.pick_polysemous(request_heads, items, ["a", "b", "b"], 1,
                                 wanted=["a"]) == [0]
