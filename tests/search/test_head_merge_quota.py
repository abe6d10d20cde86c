"""The per-head quota merge: in-graph merge_heads_quota against merge_heads_quota_np and values
worked out by hand."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search.head_merge import merge_heads, merge_heads_quota, merge_heads_quota_np

# Head 0 finds items 1, 2, 3 (0.9, 0.8, 0.7); head 1 finds 4, 5 and item 1 again (0.5, 0.4,
# 0.3). Deduplicated best-first: 1 (h0), 2 (h0), 3 (h0), 4 (h1), 5 (h1).
SCORES = np.array([[[0.9, 0.8, 0.7], [0.5, 0.4, 0.3]]], np.float32)
LABELS = np.array([[[1, 2, 3], [4, 5, 1]]], np.int64)


@pytest.mark.parametrize("k,share,labels,heads", [
    (4, 0.0, [1, 2, 3, 4], [0, 0, 0, 1]),     # the plain merge
    (4, 0.5, [1, 2, 4, 5], [0, 0, 1, 1]),     # 2 slots each: 3 loses to head 1's 5
    (4, 0.25, [1, 2, 3, 4], [0, 0, 0, 1]),    # 1 slot each: head 1's 4 is in anyway
    (3, 0.34, [1, 2, 4], [0, 0, 1]),          # floor(1.02) = 1 slot each, then 2 by score
    (2, 0.5, [1, 4], [0, 1]),
    (6, 0.5, [1, 2, 3, 4, 5, -1], [0, 0, 0, 1, 1, -1]),  # 5 distinct items: padded
])
def test_quota_by_hand(k, share, labels, heads):
    for s, l, h in (merge_heads_quota_np(SCORES, LABELS, k, share),
                    [t.numpy() for t in merge_heads_quota(tf.constant(SCORES),
                                                          tf.constant(LABELS),
                                                          tf.constant(k), share)]):
        assert l[0].tolist() == labels
        assert h[0].tolist() == heads
        score_of = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.5, 5: 0.4, -1: -np.inf}
        np.testing.assert_array_equal(s[0], np.float32([score_of[x] for x in labels]))


@pytest.mark.parametrize("batch,m,n,k,share,num_items", [
    (4, 2, 10, 10, 0.5, 20), (3, 2, 8, 16, 0.3, 12), (5, 3, 6, 7, 0.2, 1000),
    (4, 4, 5, 12, 0.25, 15), (0, 2, 3, 3, 0.5, 9), (6, 2, 12, 20, 0.45, 30)])
def test_quota_graph_equals_numpy(batch, m, n, k, share, num_items):
    rng = np.random.default_rng(batch * 100 + m * 10 + n)
    scores = rng.permutation(batch * m * n).reshape(batch, m, n).astype(np.float32) / 7.0
    labels = rng.integers(0, num_items, size=(batch, m, n)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.15] = -1
    got = [t.numpy() for t in merge_heads_quota(tf.constant(scores), tf.constant(labels),
                                                tf.constant(k), share)]
    want = merge_heads_quota_np(scores, labels, k, share)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    quota = int(np.floor(share * k + 1e-6))
    plain = merge_heads(tf.constant(scores), tf.constant(labels), tf.constant(m * n))
    for row in range(batch):
        # Each head holds min(quota, its distinct items) slots at least.
        owned = plain[2].numpy()[row]
        for head in range(m):
            assert (got[2][row] == head).sum() >= min(quota, (owned == head).sum())


def test_share_out_of_range():
    with pytest.raises(ValueError, match="head_min_share"):
        merge_heads_quota_np(SCORES, LABELS, 3, 0.6)
