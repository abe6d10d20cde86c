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


@pytest.mark.parametrize("seed,weight", [(0, 1.0), (1, .8), (2, .5)])
def test_tf_merge_equals_numpy(seed, weight):
    rng = np.random.default_rng(seed)
    batch, rewrites, k = 5, 3, 6

    def lists(shape):
        # Few distinct labels and rounded scores: many duplicates and ties.
        labels = rng.integers(0, 12, shape).astype(np.int64)
        scores = -np.sort(-np.round(rng.uniform(0, 4, shape), 0), axis=-1).astype(np.float32)
        pad = rng.uniform(size=shape) < .2
        return np.where(pad, -np.inf, scores).astype(np.float32), np.where(pad, -1, labels)

    qs, ql = lists([batch, k])
    for b in range(batch):   # a list holds an item once
        _, first = np.unique(ql[b], return_index=True)
        dup = np.ones(k, bool)
        dup[first] = False
        ql[b][dup] = -1
    rs, rl = lists([batch, rewrites, k])
    rl[0] = -1   # a query without rewrites keeps its list
    want = merge_np(qs, ql, rs, rl, 8, weight)
    got = [t.numpy() for t in merge(tf.constant(qs), tf.constant(ql), tf.constant(rs),
                                    tf.constant(rl), 8, weight)]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("cfg", [RewriteConfig(max_rewrites=0), RewriteConfig(rewrite_weight=0),
                                 RewriteConfig(rewrite_weight=1.5)])
def test_bad_rewrite_config(cfg):
    with pytest.raises(ValueError):
        cfg.validate()
