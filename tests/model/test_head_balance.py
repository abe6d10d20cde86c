"""losses.head_balance_loss: its value against a NumPy computation by hand, and that its
gradient revives a head that wins no positive (the head collapse it exists for)."""
import numpy as np
import tensorflow as tf

from dpsr_tf.model import losses


def _numpy_balance(q, items, labels, beta):
    dots = np.einsum("bmd,bd->bm", q, items)
    pos = labels > 0.5
    wins = np.zeros(q.shape[1])
    for row in dots[pos]:
        wins[np.argmax(row)] += 1          # first head on a tie, as head_win_shares
    f = wins / max(pos.sum(), 1)
    e = np.exp(dots / beta - (dots / beta).max(axis=1, keepdims=True))
    attention = e / e.sum(axis=1, keepdims=True)
    p = attention[pos].sum(axis=0) / max(pos.sum(), 1)
    return q.shape[1] * float(np.sum(f * p))


def test_value_matches_numpy_and_bounds():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 3, 4)).astype(np.float32)
    items = rng.normal(size=(16, 4)).astype(np.float32)
    labels = (rng.random(16) < 0.7).astype(np.float32)
    for beta in (0.1, 1.0):
        got = losses.head_balance_loss(tf.constant(q), tf.constant(items), tf.constant(labels),
                                       beta)
        np.testing.assert_allclose(got.numpy(), _numpy_balance(q, items, labels, beta),
                                   rtol=1e-5)
    # beta = 0 (max over heads) uses the fallback temperature.
    got = losses.head_balance_loss(tf.constant(q), tf.constant(items), tf.constant(labels), 0.0)
    np.testing.assert_allclose(
        got.numpy(), _numpy_balance(q, items, labels, losses.BALANCE_BETA_WHEN_MAX), rtol=1e-5)
    # One head winning everything with all the attention: m. No positive: 0.
    q1 = np.zeros((4, 2, 2), np.float32)
    q1[:, 0, 0] = 1.0
    items1 = np.tile(np.array([[50.0, 0.0]], np.float32), (4, 1))
    got = losses.head_balance_loss(tf.constant(q1), tf.constant(items1), tf.ones([4]), 0.1)
    np.testing.assert_allclose(got.numpy(), 2.0, rtol=1e-6)
    assert float(losses.head_balance_loss(tf.constant(q), tf.constant(items), tf.zeros([16]),
                                          0.1)) == 0.0


def test_gradient_raises_the_losing_heads_scores():
    """Head 0 wins every positive: the balance term's gradient lowers head 0's score on each
    positive and raises head 1's (descent moves head 1 towards the positives), and matches
    the analytic gradient m * f_0 * dP_0/d(dots) of the softmax; negatives get none."""
    rng = np.random.default_rng(1)
    items = rng.normal(size=(6, 4)).astype(np.float32)
    base = items + 0.05 * rng.normal(size=(6, 4)).astype(np.float32)
    # Head 0 is close to each example's item, head 1 scores 80% of it: head 0 wins, head 1
    # stays in reach (not a dead head whose attention weight is ~0).
    q = np.stack([base, 0.8 * base], axis=1)
    labels = np.array([1, 1, 1, 1, 0, 0], np.float32)
    dots = np.einsum("bmd,bd->bm", q, items)
    assert (dots[:4, 0] > dots[:4, 1]).all()
    q_var = tf.Variable(q)
    with tf.GradientTape() as tape:
        loss = losses.head_balance_loss(q_var, tf.constant(items), tf.constant(labels), 1.0)
    grad = tape.gradient(loss, q_var).numpy()                    # [B, m, d]
    # d loss / d dot_{b,h}: projected on the item direction (dots are linear in q).
    d_dots = np.einsum("bmd,bd->bm", grad, items) / np.sum(items * items, axis=1)[:, None]
    e = np.exp(dots - dots.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    # loss = 2 * f0 * mean over the 4 positives of a_0, f0 = 1: d/d dot0 = 2/4 * a0 (1 - a0).
    expected0 = 2.0 / 4.0 * a[:, 0] * (1.0 - a[:, 0])
    np.testing.assert_allclose(d_dots[:4, 0], expected0[:4], rtol=1e-4)
    np.testing.assert_allclose(d_dots[:4, 1], -expected0[:4], rtol=1e-4)
    assert (d_dots[:4, 1] < 0).all()
    np.testing.assert_allclose(grad[4:], 0.0)
