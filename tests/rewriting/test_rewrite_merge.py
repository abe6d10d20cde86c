"""The merged lexical list of a query and its rewrites: hand-worked, and TF equal to NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search.rewrite_merge import RewriteConfig, merge, merge_np


def test_hand_worked_merge():
    # query list: 7 (5.0), 3 (2.0); rewrite 1: 9 (4.0), 3 (3.0); rewrite 2: pads.
    # weight .5 -> 9: 2.0, 3: max(2.0, 1.5) = 2.0. Order: 7 5.0; 3 2.0 (query position 1)
    # before 9 2.0 (rewrite position 2).
    s, r, q = merge_np(np.array([[5., 2.]], np.float32), np.array([[7, 3]]),
                       np.array([[[4., 3.], [-np.inf, -np.inf]]], np.float32),
                       np.array([[[9, 3], [-1, -1]]]), n=3, weight=.5)
    np.testing.assert_array_equal(r, [[7, 3, 9]])
    np.testing.assert_allclose(s, [[5., 2., 2.]])
    np.testing.assert_array_equal(q, [[True, True, False]])


def test_hand_worked_sum_merge():
    # Same lists, combine "sum", weight .5: 7 5.0; 3 2.0 + .5 * 3.0 = 3.5; 9 .5 * 4.0 = 2.0.
    s, r, q = merge_np(np.array([[5., 2.]], np.float32), np.array([[7, 3]]),
                       np.array([[[4., 3.], [1., -np.inf]]], np.float32),
                       np.array([[[9, 3], [7, -1]]]), n=4, weight=.5, combine="sum")
    # 7: 5.0 + .5 * 1.0 (rewrite 2) = 5.5.
    np.testing.assert_array_equal(r, [[7, 3, 9, -1]])
    np.testing.assert_allclose(s, [[5.5, 3.5, 2.0, -np.inf]])
    np.testing.assert_array_equal(q, [[True, True, False, False]])


def test_hand_worked_capped_merge():
    # query list: 7 (5.0), 3 (2.0); rewrite 1: 9 (20.0), 4 (10.0); rewrite 2: 8 (2.0); weight .5.
    # capped: rewrite 1's factor .5 * min(1, 5 / 20) = .125 -> 9: 2.5, 4: 1.25; rewrite 2's
    # .5 * min(1, 5 / 2) = .5 -> 8: 1.0. Order 7 5.0, 9 2.5, 3 2.0, 4 1.25, 8 1.0.
    qs, ql = np.array([[5., 2.]], np.float32), np.array([[7, 3]])
    rs = np.array([[[20., 10.], [2., -np.inf]]], np.float32)
    rl = np.array([[[9, 4], [8, -1]]])
    s, r, q = merge_np(qs, ql, rs, rl, n=5, weight=.5, combine="capped")
    np.testing.assert_array_equal(r, [[7, 9, 3, 4, 8]])
    np.testing.assert_allclose(s, [[5., 2.5, 2., 1.25, 1.]])
    np.testing.assert_array_equal(q, [[True, False, True, False, False]])
    # "max" on the same lists lets the long rewrite push the query's hits down: 9 10.0,
    # 7 5.0 (the query's position first on a tie with 4's 5.0), 4, 3, 8.
    _, r, _ = merge_np(qs, ql, rs, rl, n=5, weight=.5, combine="max")
    np.testing.assert_array_equal(r, [[9, 7, 4, 3, 8]])
    # A query without hits of its own takes its rewrites at weight .5, as "max" does.
    s, r, q = merge_np(np.full([1, 2], -np.inf, np.float32), np.array([[-1, -1]]), rs, rl,
                       n=3, weight=.5, combine="capped")
    np.testing.assert_array_equal(r, [[9, 4, 8]])
    np.testing.assert_allclose(s, [[10., 5., 1.]])
    got = [t.numpy() for t in merge(tf.constant(qs), tf.constant(ql), tf.constant(rs),
                                    tf.constant(rl), 5, .5, "capped")]
    np.testing.assert_array_equal(got[1], [[7, 9, 3, 4, 8]])
    np.testing.assert_allclose(got[0], [[5., 2.5, 2., 1.25, 1.]])


def _brute_force_sum(qs, ql, rs, rl, n, weight):
    """Item -> float64 sum of weighted scores, order (-sum, first position), top n rows."""
    out = []
    for b in range(ql.shape[0]):
        total, first, pos = {}, {}, 0
        for scores, labels, f in [(qs[b], ql[b], 1.0)] + [(rs[b, j], rl[b, j], weight)
                                                          for j in range(rl.shape[1])]:
            for sc, lab in zip(scores, labels):
                if lab >= 0:
                    total[lab] = total.get(lab, 0.0) + float(sc) * f
                    first.setdefault(lab, pos)
                pos += 1
        ranked = sorted(total, key=lambda x: (-total[x], first[x]))[:n]
        out.append(ranked + [-1] * (n - len(ranked)))
    return np.array(out)


@pytest.mark.parametrize("combine", ["max", "sum", "capped"])
@pytest.mark.parametrize("seed,weight", [(0, 1.0), (1, .8), (2, .5)])
def test_tf_merge_equals_numpy(seed, weight, combine):
    rng = np.random.default_rng(seed)
    batch, rewrites, k = 5, 3, 6

    def lists(shape):
        # Few distinct labels and rounded scores: many duplicates and ties.
        labels = rng.integers(0, 12, shape).astype(np.int64)
        scores = -np.sort(-np.round(rng.uniform(0, 4, shape), 0), axis=-1).astype(np.float32)
        pad = rng.uniform(size=shape) < .2
        return np.where(pad, -np.inf, scores).astype(np.float32), np.where(pad, -1, labels)

    qs, ql = lists([batch, k])
    qs[1], ql[1] = -np.inf, -1   # a query without hits of its own
    for b in range(batch):   # a list holds an item once
        _, first = np.unique(ql[b], return_index=True)
        dup = np.ones(k, bool)
        dup[first] = False
        ql[b][dup] = -1
    rs, rl = lists([batch, rewrites, k])
    rl[0] = -1   # a query without rewrites keeps its list
    want = merge_np(qs, ql, rs, rl, 8, weight, combine)
    got = [t.numpy() for t in merge(tf.constant(qs), tf.constant(ql), tf.constant(rs),
                                    tf.constant(rl), 8, weight, combine)]
    if combine == "sum":   # small integer scores: float32 and float64 sums rank alike here
        np.testing.assert_array_equal(want[1], _brute_force_sum(qs, ql, rs, rl, 8, weight))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("cfg", [RewriteConfig(max_rewrites=0), RewriteConfig(rewrite_weight=0),
                                 RewriteConfig(rewrite_weight=1.5),
                                 RewriteConfig(combine="mean")])
def test_bad_rewrite_config(cfg):
    with pytest.raises(ValueError):
        cfg.validate()
