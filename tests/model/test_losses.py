"""Hinge loss with alpha-weighted batch/random negatives and human negatives (in-batch and
joined per query), sampled softmax + logQ, against hand-worked values and NumPy references."""
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


def _hinge(labels, queries, human_weight=1.0, alpha=0.5, human_scores=None, human_mask=None,
           hard_scores=None, hard_mask=None, hard_weight=1.0):
    extra = {}
    if human_scores is not None:
        extra = {"human_scores": tf.constant(human_scores, tf.float32),
                 "human_mask": tf.constant(human_mask, tf.float32)}
    if hard_scores is not None:
        extra.update(hard_scores=tf.constant(hard_scores, tf.float32),
                     hard_mask=tf.constant(hard_mask, tf.float32),
                     hard_negative_weight=hard_weight)
    loss, stats = losses.hinge_loss(
        tf.constant(S), tf.constant(RAND), tf.constant(ROWS), tf.constant(RAND_ROWS),
        tf.constant(labels, tf.float32), tf.constant(queries), margin=0.1, alpha=alpha,
        human_negative_weight=human_weight, **extra)
    return float(loss.numpy()), {k: float(v.numpy()) for k, v in stats.items()}


@pytest.mark.parametrize("alpha, expected", [(0.5, 0.0875 / 3), (0.0, 0.025 / 3),
                                             (1.0, 0.15 / 3)])
def test_hinge_loss_alpha_weights_hand_worked(alpha, expected):
    # Every other example is a batch negative, the one random negative is shared:
    # row 0: pos .9: batch .2 -> 0, .85 -> .1 - .9 + .85 = .05 (mean .025); rand .5 -> 0
    # row 1: pos .7: batch .1 -> 0, .3 -> 0 (mean 0); rand .75 -> .1 - .7 + .75 = .15
    # row 2: pos .8: batch .4 -> 0, .65 -> 0 (mean 0); rand .1 -> 0
    # per example (1 - a) * batch mean + a * random mean; loss = sum / 3.
    # a = .5: (.0125 + .075 + 0) / 3; a = 0: .025 / 3; a = 1: .15 / 3.
    loss, stats = _hinge([1, 1, 1], ["a", "b", "c"], alpha=alpha)
    assert loss == pytest.approx(expected, abs=1e-6)
    assert stats["batch_negatives_per_positive"] == pytest.approx(2.0)
    assert stats["random_negatives_per_positive"] == pytest.approx(1.0)
    assert stats["human_negative_pairs"] == 0


@pytest.mark.parametrize("weight, expected", [(1.0, 0.0625), (2.0, 0.0875), (0.0, 0.0375)])
def test_hinge_loss_in_batch_human_negative_hand_worked(weight, expected):
    # Example 2 is a human negative of query "a" (example 0's query). It is no batch negative
    # of anyone, and no positive. alpha .5.
    # row 0: batch: only col 1 (.2) -> 0; rand .5 -> 0; human: .1 - .9 + S[0, 2] = .85 -> .05
    # row 1: batch col 0 (.1) -> 0; rand .75 -> .15, times .5 = .075.
    # loss = (.05 * weight + .075) / 2 positives.
    loss, stats = _hinge([1, 1, 0], ["a", "b", "a"], human_weight=weight)
    assert loss == pytest.approx(expected, abs=1e-6)
    assert stats["human_negative_pairs"] == 1
    assert stats["positives"] == 2
    assert stats["batch_negatives_per_positive"] == pytest.approx(1.0)


def test_hinge_loss_joined_human_negatives_hand_worked():
    # Joined from the per-query table: row 0 has two (.88 and .5), row 1 none, row 2 one (.95).
    # row 0: human mean (max(0, .1 - .9 + .88) = .08, 0) = .04; row 2: .1 - .8 + .95 = .25.
    # With alpha .5 the rest is as in the alpha test: (.0125 + .075 + 0) / 3.
    loss, stats = _hinge([1, 1, 1], ["a", "b", "c"], human_weight=2.0,
                         human_scores=[[0.88, 0.5], [0.0, 0.0], [0.95, 0.0]],
                         human_mask=[[1, 1], [0, 0], [1, 0]])
    assert loss == pytest.approx((0.0875 + 2.0 * (0.04 + 0.25)) / 3, abs=1e-6)
    assert stats["human_negative_pairs"] == 3


@pytest.mark.parametrize("weight", [2.0, 1.0, 0.0])
def test_hinge_loss_mined_hard_negatives_hand_worked(weight):
    # Mined hard negatives joined per query: row 0 has two (.86, .3), row 1 none, row 2 two
    # (.75, .72); no human negatives (weight 0).
    # row 0: pos .9: max(0, .1 - .9 + .86) = .06, .3 -> 0: mean .03
    # row 2: pos .8: .1 - .8 + .75 = .05, .1 - .8 + .72 = .02: mean .035
    # alpha .5 batch/random part as in the alpha test: .0875 over the 3 positives.
    # loss = (.0875 + weight * (.03 + .035)) / 3.
    loss, stats = _hinge([1, 1, 1], ["a", "b", "c"], human_weight=0.0,
                         hard_scores=[[0.86, 0.3], [0.0, 0.0], [0.75, 0.72]],
                         hard_mask=[[1, 1], [0, 0], [1, 1]], hard_weight=weight)
    assert loss == pytest.approx((0.0875 + weight * 0.065) / 3, abs=1e-6)
    assert stats["hard_negative_pairs"] == 4
    assert stats["human_negative_pairs"] == 0


def test_hinge_loss_hard_negatives_of_a_non_positive_do_not_count():
    # Example 2 is a human negative (label 0): its mined negatives are no pairs. Row 0 as in
    # the in-batch human test (.05 from example 2, weight 1) plus hard .06 / 1 (weight 1);
    # row 1: .075 (random). loss = (.05 + .06 + .075) / 2.
    loss, stats = _hinge([1, 1, 0], ["a", "b", "a"], hard_scores=[[0.86], [0.0], [0.99]],
                         hard_mask=[[1], [0], [1]])
    assert loss == pytest.approx((0.05 + 0.06 + 0.075) / 2, abs=1e-6)
    assert stats["hard_negative_pairs"] == 1


def _hinge_reference(s, rand, rows, rand_rows, labels, queries, alpha, margin):
    total, n = 0.0, 0
    for i in range(len(rows)):
        if labels[i] < 0.5:
            continue
        batch = [max(0.0, margin - s[i, i] + s[i, j]) for j in range(len(rows))
                 if labels[j] > 0.5 and rows[j] != rows[i] and queries[j] != queries[i]]
        rnd = [max(0.0, margin - s[i, i] + rand[i, r]) for r in range(len(rand_rows))
               if rand_rows[r] != rows[i]]
        total += (1 - alpha) * (np.mean(batch) if batch else 0.0) + alpha * (
            np.mean(rnd) if rnd else 0.0)
        n += 1
    return total / max(n, 1)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("batch", [6, 16])
def test_hinge_alpha_uses_every_negative(alpha, batch):
    rng = np.random.RandomState(batch)
    rows = rng.permutation(100)[:batch].astype(np.int64)
    rows[1] = rows[0]                               # a duplicate item: not a negative of 0/1
    rand_rows = rng.permutation(100)[:8].astype(np.int64)
    rand_rows[0] = rows[2]                          # a random negative that is 2's own item
    s = rng.uniform(-1, 1, size=(batch, batch)).astype(np.float32)
    rand = rng.uniform(-1, 1, size=(batch, 8)).astype(np.float32)
    labels = np.ones(batch, np.float32)
    labels[3] = 0
    queries = [f"q{i % (batch - 2)}" for i in range(batch)]   # two shared queries
    loss, _ = losses.hinge_loss(tf.constant(s), tf.constant(rand), tf.constant(rows),
                                tf.constant(rand_rows), tf.constant(labels),
                                tf.constant(queries), margin=0.3, alpha=alpha,
                                human_negative_weight=0.0)
    want = _hinge_reference(s, rand, rows, rand_rows, labels, queries, alpha, 0.3)
    assert float(loss.numpy()) == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_same_query_positive_is_never_a_negative():
    # Examples 0 and 2 share a query: neither is the other's batch negative.
    valid = losses.batch_negative_candidates(tf.constant(ROWS), tf.constant([1.0, 1.0, 1.0]),
                                             tf.constant(["a", "b", "a"])).numpy()
    np.testing.assert_array_equal(valid, [[False, True, False],
                                          [True, False, True],
                                          [False, True, False]])


def _xent(values, target):
    values = np.asarray(values, np.float64)
    return np.log(np.exp(values - values.max()).sum()) + values.max() - target


def _softmax_reference(s, rand, rows, rand_rows, labels, queries, temperature, log_q, alpha,
                       human=(), human_weight=1.0, hard=(), hard_weight=1.0):
    """NumPy reference: (1 - alpha) * masked in-batch softmax with logQ and the joined human
    negatives + alpha * softmax against the random negatives, mean over positives."""
    b = len(rows)
    total, n = 0.0, 0
    for i in range(b):
        if labels[i] < 0.5:
            continue
        target = s[i, i] / temperature - log_q[i]
        batch = [target] + [s[i, j] / temperature - log_q[j] for j in range(b)
                            if j != i and labels[j] > 0.5 and rows[j] != rows[i]
                            and queries[j] != queries[i]]
        batch += [h / temperature + np.log(human_weight) for h in (human[i] if human else [])]
        batch += [x / temperature + np.log(hard_weight) for x in (hard[i] if hard else [])]
        rnd = [s[i, i] / temperature] + [rand[i, r] / temperature for r in range(len(rand_rows))
                                         if rand_rows[r] != rows[i]]
        total += (1 - alpha) * _xent(batch, target) + alpha * _xent(rnd, s[i, i] / temperature)
        n += 1
    return total / n


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("human_weight", [1.0, 2.0])
def test_sampled_softmax_matches_reference(alpha, human_weight):
    rng = np.random.RandomState(0)
    b, r = 6, 3
    s = rng.uniform(-1, 1, size=(b, b)).astype(np.float32)
    rand = rng.uniform(-1, 1, size=(b, r)).astype(np.float32)
    rows = np.array([0, 1, 2, 2, 4, 5], np.int64)            # 2 and 3: the same item
    rand_rows = np.array([4, 7, 8], np.int64)                # 4 is example 4's own item
    labels = np.array([1, 1, 1, 1, 0, 1], np.float32)        # 4: a human negative
    queries = ["a", "b", "c", "d", "e", "b"]                 # 1 and 5: the same query
    log_q = rng.uniform(-3, 0, size=b).astype(np.float32)
    human = [[0.3, 0.9], [], [0.1], [], [0.5], []]            # joined per-query negatives
    h_scores = np.zeros([b, 2], np.float32)
    h_mask = np.zeros([b, 2], np.float32)
    for i, values in enumerate(human):
        h_scores[i, :len(values)] = values
        h_mask[i, :len(values)] = 1
    got, stats = losses.sampled_softmax_loss(
        tf.constant(s), tf.constant(rand), tf.constant(rows), tf.constant(rand_rows),
        tf.constant(labels), tf.constant(queries), temperature=0.2, alpha=alpha,
        batch_log_q=tf.constant(log_q), random_log_q=np.log(3 / 100.0),
        human_scores=tf.constant(h_scores), human_mask=tf.constant(h_mask),
        human_negative_weight=human_weight)
    human_of_positives = [v if labels[i] > 0.5 else [] for i, v in enumerate(human)]
    want = _softmax_reference(s, rand, rows, rand_rows, labels, queries, 0.2, log_q, alpha,
                              human_of_positives, human_weight)
    assert float(got.numpy()) == pytest.approx(want, rel=1e-5)
    assert float(stats["human_negative_pairs"].numpy()) == 3   # example 4 is no positive


def _padded(lists, width):
    scores = np.zeros([len(lists), width], np.float32)
    mask = np.zeros([len(lists), width], np.float32)
    for i, values in enumerate(lists):
        scores[i, :len(values)] = values
        mask[i, :len(values)] = 1
    return scores, mask


@pytest.mark.parametrize("hard_weight", [1.0, 0.5, 3.0])
def test_sampled_softmax_with_hard_negatives_matches_reference(hard_weight):
    rng = np.random.RandomState(1)
    b = 5
    s = rng.uniform(-1, 1, size=(b, b)).astype(np.float32)
    rows = np.array([0, 1, 2, 3, 4], np.int64)
    labels = np.array([1, 1, 0, 1, 1], np.float32)           # 2: a human negative
    queries = ["a", "b", "c", "d", "e"]
    log_q = rng.uniform(-3, 0, size=b).astype(np.float32)
    human = [[0.2], [], [], [0.4], []]
    hard = [[0.7, 0.1, -0.2], [0.5], [0.9], [], [0.3, 0.8]]  # row 2's: not a positive
    h_scores, h_mask = _padded(human, 1)
    x_scores, x_mask = _padded(hard, 3)
    got, stats = losses.sampled_softmax_loss(
        tf.constant(s), None, tf.constant(rows), None, tf.constant(labels),
        tf.constant(queries), temperature=0.1, batch_log_q=tf.constant(log_q),
        human_scores=tf.constant(h_scores), human_mask=tf.constant(h_mask),
        hard_scores=tf.constant(x_scores), hard_mask=tf.constant(x_mask),
        hard_negative_weight=hard_weight)
    hard_of_positives = [v if labels[i] > 0.5 else [] for i, v in enumerate(hard)]
    want = _softmax_reference(s, np.zeros([b, 0]), rows, [], labels, queries, 0.1, log_q, 0.0,
                              human, 1.0, hard_of_positives, hard_weight)
    assert float(got.numpy()) == pytest.approx(want, rel=1e-5)
    assert float(stats["hard_negative_pairs"].numpy()) == 6


def test_sampled_softmax_hard_negative_hand_worked():
    # Two examples, T = 1, no logQ. Row 0: target 1.0, batch column 1 scores 0.0, one hard
    # negative 0.5: log(e^1 + e^0 + e^.5) - 1 = log(2.71828 + 1 + 1.64872) - 1 = 0.68030.
    # Row 1: target 0.2, column 0 scores 0.0, no hard negative: log(e^.2 + 1) - .2 = 0.59814.
    s = np.array([[1.0, 0.0], [0.0, 0.2]], np.float32)
    got, _ = losses.sampled_softmax_loss(
        tf.constant(s), None, tf.constant([0, 1], tf.int64), None,
        tf.constant([1.0, 1.0]), tf.constant(["a", "b"]), temperature=1.0,
        hard_scores=tf.constant([[0.5], [0.0]]), hard_mask=tf.constant([[1.0], [0.0]]))
    assert float(got.numpy()) == pytest.approx((0.68030 + 0.59814) / 2, abs=1e-4)


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
