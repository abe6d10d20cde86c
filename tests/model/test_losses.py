"""Hinge loss with mixed and human negatives, the alpha mix counts, sampled softmax + logQ."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import losses

# S[i, j] = score(q_i, g_j) for a batch of 3; one shared random negative (row 5).
S = np.array([[0.9, 0.2, 0.85],
              [0.1, 0.7, 0.3],
              [0.4, 0.65, 0.8]], np.float32)
RAND = np.array([[0.5], [0.75], [0.1]], np.float32)
ROWS = np.array([0, 1, 2], np.int64)
RAND_ROWS = np.array([5], np.int64)


def test_hinge_terms_hand_worked():
    # row 0: max(0, .1 - .5 + .45) + max(0, .1 - .5 + .1) = .05 + 0
    # row 1: max(0, .1 - .2 + .3) = .2; its second negative is masked out.
    got = losses.hinge_terms(tf.constant([0.5, 0.2]), tf.constant([[0.45, 0.1], [0.3, -0.5]]),
                             tf.constant([[1.0, 1.0], [1.0, 0.0]]), 0.1)
    np.testing.assert_allclose(got.numpy(), [0.05, 0.2], atol=1e-6)


def _hinge(labels, queries, human_weight=1.0, num_random=1, num_batch=2):
    loss, stats = losses.hinge_loss(
        tf.constant(S), tf.constant(RAND), tf.constant(ROWS), tf.constant(RAND_ROWS),
        tf.constant(labels, tf.float32), tf.constant(queries), margin=0.1,
        num_random=num_random, num_batch=num_batch, human_negative_weight=human_weight, seed=1)
    return float(loss.numpy()), {k: float(v.numpy()) for k, v in stats.items()}


def test_hinge_loss_mixed_negatives_hand_worked():
    # Every other example is a valid batch negative (2 of them = num_batch, so the draw takes
    # both) plus the one random negative:
    # row 0: pos .9: rand .5 -> 0; batch .2 -> 0, .85 -> .1 - .9 + .85 = .05      => .05
    # row 1: pos .7: rand .75 -> .1 - .7 + .75 = .15; batch .1, .3 -> 0           => .15
    # row 2: pos .8: rand .1 -> 0; batch .4 -> 0, .65 -> -.05 -> 0                => 0
    # loss = (.05 + .15 + 0) / 3
    loss, stats = _hinge([1, 1, 1], ["a", "b", "c"])
    assert loss == pytest.approx(0.2 / 3, abs=1e-6)
    assert stats["negatives_per_positive"] == pytest.approx(3.0)
    assert stats["human_negative_pairs"] == 0


@pytest.mark.parametrize("weight, expected", [(1.0, 0.1), (2.0, 0.125), (0.0, 0.075)])
def test_hinge_loss_human_negative_hand_worked(weight, expected):
    # Example 2 is a human negative of query "a" (example 0's query). It is no batch negative
    # of anyone, and no positive. row 0: rand .5 -> 0; batch: only col 1 (.2) -> 0;
    # human: .1 - .9 + S[0, 2] = .85 -> .05 * weight. row 1: rand .75 -> .15; batch col 0 (.1)
    # -> 0. loss = (.05 * weight + .15) / 2 positives.
    loss, stats = _hinge([1, 1, 0], ["a", "b", "a"], human_weight=weight)
    assert loss == pytest.approx(expected, abs=1e-6)
    assert stats["human_negative_pairs"] == 1
    assert stats["positives"] == 2
    assert stats["negatives_per_positive"] == pytest.approx(2.0)   # 1 random + 1 batch each


def test_same_query_positive_is_never_a_negative():
    # Examples 0 and 2 share a query: neither is the other's batch negative.
    valid = losses.batch_negative_candidates(tf.constant(ROWS), tf.constant([1.0, 1.0, 1.0]),
                                             tf.constant(["a", "b", "a"])).numpy()
    np.testing.assert_array_equal(valid, [[False, True, False],
                                          [True, False, True],
                                          [False, True, False]])


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("batch", [6, 16])
def test_alpha_mix_draws_the_right_counts(alpha, batch):
    num_negatives, num_random_shared = 8, 8
    n_rand = int(round(alpha * num_negatives))
    n_batch = num_negatives - n_rand
    rng = np.random.RandomState(batch)
    rows = rng.permutation(100)[:batch].astype(np.int64)
    rows[1] = rows[0]                               # a duplicate item: not a negative of 0/1
    scores = tf.constant(rng.normal(size=(batch, batch)).astype(np.float32))
    rand_scores = tf.constant(rng.normal(size=(batch, num_random_shared)).astype(np.float32))
    labels = tf.ones([batch])
    queries = tf.constant([f"q{i}" for i in range(batch)])
    valid = losses.batch_negative_candidates(tf.constant(rows), labels, queries)
    rand_valid = tf.ones([batch, num_random_shared], tf.bool)
    neg, mask = losses.mixed_negatives(scores, valid, rand_scores, rand_valid, n_rand, n_batch,
                                       seed=3)
    mask = mask.numpy()
    k = min(n_batch, batch)
    assert neg.shape == (batch, n_rand + k)
    # The random part: exactly the first n_rand shared negatives, for every example.
    np.testing.assert_array_equal(neg.numpy()[:, :n_rand], rand_scores.numpy()[:, :n_rand])
    np.testing.assert_array_equal(mask[:, :n_rand], 1.0)
    # The batch part: min(n_batch, valid candidates) distinct valid columns per example.
    valid_np = valid.numpy()
    for i in range(batch):
        expected = min(n_batch, int(valid_np[i].sum()))
        assert mask[i, n_rand:].sum() == expected
    if n_batch:
        idx, m = losses.sample_without_replacement(valid, n_batch, seed=3)
        idx, m = idx.numpy(), m.numpy()
        for i in range(batch):
            chosen = idx[i][m[i] > 0]
            assert len(set(chosen)) == len(chosen)
            assert valid_np[i, chosen].all()
            assert rows[i] not in rows[chosen]


def test_batch_negative_draw_is_uniform():
    # 4 valid candidates, 2 drawn per row: each candidate is drawn half the time.
    valid = tf.constant(np.array([[False, True, True, True, True]] * 4000))
    idx, mask = losses.sample_without_replacement(valid, 2, seed=7)
    counts = np.bincount(idx.numpy()[mask.numpy() > 0].ravel(), minlength=5)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / 4000.0, 0.5, atol=0.03)


def _softmax_reference(s, rand, rows, rand_rows, labels, queries, temperature, log_q, rand_lq):
    """NumPy reference: masked in-batch softmax with logQ, mean over positives."""
    b = len(rows)
    total, n = 0.0, 0
    for i in range(b):
        if labels[i] < 0.5:
            continue
        logits = []
        for j in range(b):
            if j == i or (labels[j] > 0.5 and rows[j] != rows[i] and queries[j] != queries[i]):
                logits.append((j, s[i, j] / temperature - log_q[j]))
        for r in range(len(rand_rows)):
            if rand_rows[r] != rows[i]:
                logits.append((b + r, rand[i, r] / temperature - rand_lq))
        values = np.array([v for _, v in logits])
        target = [v for j, v in logits if j == i][0]
        total += np.log(np.exp(values - values.max()).sum()) + values.max() - target
        n += 1
    return total / n


def test_sampled_softmax_matches_reference():
    rng = np.random.RandomState(0)
    b, r = 6, 3
    s = rng.uniform(-1, 1, size=(b, b)).astype(np.float32)
    rand = rng.uniform(-1, 1, size=(b, r)).astype(np.float32)
    rows = np.array([0, 1, 2, 2, 4, 5], np.int64)            # 2 and 3: the same item
    rand_rows = np.array([4, 7, 8], np.int64)                # 4 is example 4's own item
    labels = np.array([1, 1, 1, 1, 0, 1], np.float32)        # 4: a human negative
    queries = ["a", "b", "c", "d", "e", "b"]                 # 1 and 5: the same query
    log_q = rng.uniform(-3, 0, size=b).astype(np.float32)
    rand_lq = np.log(3 / 100.0)
    got = losses.sampled_softmax_loss(
        tf.constant(s), tf.constant(rand), tf.constant(rows), tf.constant(rand_rows),
        tf.constant(labels), tf.constant(queries), temperature=0.2,
        batch_log_q=tf.constant(log_q), random_log_q=rand_lq)
    want = _softmax_reference(s, rand, rows, rand_rows, labels, queries, 0.2, log_q, rand_lq)
    assert float(got.numpy()) == pytest.approx(want, rel=1e-5)


def test_streaming_log_q_hand_worked():
    # num_items 4, initial interval 2, decay 0.1.
    # step 1 sees rows 0, 1: log q = -log 2 (prior); last = 1, interval stays 2 (first sight).
    # step 3 sees row 0: log q = -log 2; interval = .9 * 2 + .1 * (3 - 1) = 2.
    # step 4 sees row 0: log q = -log 2; interval = .9 * 2 + .1 * (4 - 3) = 1.9.
    # step 5 sees row 0: log q = -log 1.9.
    with tf.Graph().as_default():
        rows = tf.compat.v1.placeholder(tf.int64, [None])
        step = tf.compat.v1.placeholder(tf.int64, [])
        log_q, update = losses.streaming_log_q(rows, 4, step, decay=0.1, initial_interval=2.0)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            seen = []
            for t, r in [(1, [0, 1]), (3, [0]), (4, [0]), (5, [0])]:
                seen.append(sess.run([log_q, update], {rows: r, step: t})[0])
    np.testing.assert_allclose(seen[0], [-np.log(2.0)] * 2, atol=1e-6)
    np.testing.assert_allclose(seen[1], [-np.log(2.0)], atol=1e-6)
    np.testing.assert_allclose(seen[2], [-np.log(2.0)], atol=1e-6)
    np.testing.assert_allclose(seen[3], [-np.log(1.9)], atol=1e-6)
