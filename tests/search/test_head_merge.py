"""merge_heads against a plain-Python reference: sort all hits, keep each item's best, top k."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search.head_merge import merge_heads, merge_heads_np


def reference(scores, labels, k):
    out = []
    for row_s, row_l in zip(scores, labels):
        best = {}
        for head in range(row_s.shape[0]):
            for s, l in zip(row_s[head], row_l[head]):
                if l < 0:
                    continue
                if l not in best or s > best[l][0]:
                    best[l] = (s, head)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        ranked += [(-1, (-np.inf, -1))] * (k - len(ranked))
        out.append(ranked)
    return out


@pytest.mark.parametrize("batch,m,n,k,num_items", [
    (1, 1, 5, 5, 100), (4, 3, 10, 10, 20), (3, 2, 8, 16, 12), (5, 4, 6, 7, 1000), (0, 2, 3, 3, 9)])
def test_merge_heads_matches_reference(batch, m, n, k, num_items):
    rng = np.random.default_rng(batch * 100 + m * 10 + n)
    # Distinct scores per row so the order is unambiguous; labels may repeat across heads.
    scores = rng.permutation(batch * m * n).reshape(batch, m, n).astype(np.float32) / 7.0
    labels = rng.integers(0, num_items, size=(batch, m, n)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.15] = -1  # padding
    got_s, got_l, got_h = (t.numpy() for t in merge_heads(
        tf.constant(scores), tf.constant(labels), tf.constant(k)))
    want = reference(scores, labels, k)
    assert got_l.shape == (batch, k)
    for row in range(batch):
        assert got_l[row].tolist() == [l for l, _ in want[row]]
        np.testing.assert_array_equal(got_s[row], [s for _, (s, _) in want[row]])
        assert got_h[row].tolist() == [h for _, (_, h) in want[row]]


def test_item_found_by_two_heads_keeps_best_score_and_its_head():
    # Hand-worked: item 7 is found by head 0 (0.5) and head 1 (0.9) -> kept once, 0.9, head 1.
    scores = tf.constant([[[0.5, 0.4], [0.9, 0.1]]])
    labels = tf.constant([[[7, 3], [7, 5]]], tf.int64)
    s, l, h = merge_heads(scores, labels, tf.constant(3))
    assert l.numpy().tolist() == [[7, 3, 5]]
    np.testing.assert_allclose(s.numpy(), [[0.9, 0.4, 0.1]])
    assert h.numpy().tolist() == [[1, 0, 1]]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("batch,m,n,k,num_items", [
    (1, 1, 5, 5, 100), (4, 3, 10, 10, 20), (3, 2, 8, 16, 12), (5, 4, 6, 7, 1000), (0, 2, 3, 3, 9),
    (6, 8, 4, 32, 5)])
def test_numpy_twin_equals_merge_heads(batch, m, n, k, num_items, ties):
    rng = np.random.default_rng(batch * 1000 + m * 100 + n + ties)
    if ties:  # few distinct values: tie order must match too
        scores = (rng.integers(0, 4, size=(batch, m, n)) / 4.0).astype(np.float32)
    else:
        scores = rng.standard_normal((batch, m, n)).astype(np.float32)
    labels = rng.integers(0, num_items, size=(batch, m, n)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.15] = -1
    want = [t.numpy() for t in merge_heads(tf.constant(scores), tf.constant(labels),
                                           tf.constant(k))]
    got = merge_heads_np(scores, labels, k)
    for w, g, dtype in zip(want, got, (np.float32, np.int64, np.int32)):
        assert g.dtype == dtype and g.shape == (batch, k)
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("shape_s,shape_l,k,match", [
    ((2, 3, 4), (2, 3, 5), 4, "shapes"), ((2, 12), (2, 12), 4, "shapes"),
    ((2, 3, 4), (2, 3, 4), 13, r"\[1, 12\], got 13"), ((2, 3, 4), (2, 3, 4), 0, "got 0")])
def test_numpy_twin_bad_input_is_value_error(shape_s, shape_l, k, match):
    with pytest.raises(ValueError, match=match):
        merge_heads_np(np.zeros(shape_s, np.float32), np.zeros(shape_l, np.int64), k)


def test_nan_and_infinite_scores_rank_as_the_numpy_twin_ranks_them():
    rng = np.random.default_rng(5)
    scores = (rng.integers(0, 3, size=(4, 3, 50)) / 3.0).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = np.nan
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.inf
    labels = rng.integers(0, 40, size=scores.shape).astype(np.int64)
    labels[rng.random(labels.shape) < 0.1] = -1
    for k in (1, 40, 150):
        got = [t.numpy() for t in merge_heads(tf.constant(scores), tf.constant(labels), k)]
        for g, w in zip(got, merge_heads_np(scores, labels, k)):
            np.testing.assert_array_equal(g, w)
        assert not np.isnan(got[0]).any()


def test_the_merge_is_one_op_of_static_shape_in_a_graph():
    with tf.Graph().as_default() as graph:
        scores = tf.compat.v1.placeholder(tf.float32, [None, 2, 1000])
        labels = tf.compat.v1.placeholder(tf.int64, [None, 2, 1000])
        merged = merge_heads(scores, labels, 100)
        assert [op.type for op in graph.get_operations()
                if op.type.startswith("Dpsr")] == ["Dpsr>MergeHeads"]
        assert [t.shape.as_list() for t in merged] == [[None, 100]] * 3


@pytest.mark.parametrize("shape_s,shape_l,k,match", [
    ((2, 3, 4), (2, 3, 5), 4, "must both be \\[batch, heads, n\\]"),
    ((2, 3, 4), (2, 3, 4), 13, r"k must be in \[1, heads \* n\] = \[1, 12\], got 13"),
    ((2, 3, 4), (2, 3, 4), 0, "got 0")])
def test_the_op_refuses_bad_input_with_invalid_argument(shape_s, shape_l, k, match):
    # Fed at run time, so the kernel's checks answer (not graph-time shape inference).
    with tf.Graph().as_default():
        scores = tf.compat.v1.placeholder(tf.float32, [None, None, None])
        labels = tf.compat.v1.placeholder(tf.int64, [None, None, None])
        k_in = tf.compat.v1.placeholder(tf.int32, [])
        merged = merge_heads(scores, labels, k_in)
        with tf.compat.v1.Session() as session:
            with pytest.raises(tf.errors.InvalidArgumentError, match=match):
                session.run(merged, {scores: np.zeros(shape_s, np.float32),
                                     labels: np.zeros(shape_l, np.int64), k_in: k})
