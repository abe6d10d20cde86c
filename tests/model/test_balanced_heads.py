"""head_assignment "balanced": the greedy capacity-constrained assignment against hand-worked
batches, that the capacity holds, that a positive's gradient reaches only its assigned head,
and that the training graph scores positives that way."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import losses
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_fn import dpsr_model_fn
from tests.support.tiny_model import FakeCatalog, FakeLayoutSpec


def test_assignment_by_hand():
    # Margins (best - second): 2, 2, 0.5, 2 (row 3 prefers head 1). In order rows 0, 1, 3, 2
    # (ties by row): 0 -> h0, 1 -> h0 (full: capacity ceil(4 / 2) = 2), 3 -> h1, 2 -> its best
    # head h0 is full -> h1. Plain argmax would give head 0 three positives.
    dots = np.array([[3, 1], [2, 0], [1, 0.5], [0, 2]], np.float32)
    got = losses.balanced_assignment_np(dots, np.ones(4, bool), 0.0)
    np.testing.assert_array_equal(got, np.eye(2)[[0, 0, 1, 1]])
    # Slack 0.5: capacity ceil(4 * 1.5 / 2) = 3, so row 2 keeps its best head.
    got = losses.balanced_assignment_np(dots, np.ones(4, bool), 0.5)
    np.testing.assert_array_equal(got, np.eye(2)[[0, 0, 0, 1]])


def test_non_positives_get_no_head_and_do_not_count():
    dots = np.array([[3, 1], [2, 0], [9, 0], [0, 2]], np.float32)
    positive = np.array([True, True, False, True])
    got = losses.balanced_assignment_np(dots, positive, 0.0)
    # P = 3, capacity 2: rows 0, 1 -> h0, row 3 -> h1; row 2 (a negative) none.
    np.testing.assert_array_equal(got, np.array([[1, 0], [1, 0], [0, 0], [0, 1]], np.float32))
    assert not losses.balanced_assignment_np(dots, np.zeros(4, bool), 0.0).any()


@pytest.mark.parametrize("m,slack", [(2, 0.0), (3, 0.0), (3, 0.25), (4, 1.0)])
def test_capacity_holds_and_every_positive_has_one_head(m, slack):
    rng = np.random.RandomState(7)
    # Every positive prefers head 0: an unconstrained argmax would give it all of them.
    dots = rng.normal(size=(50, m)).astype(np.float32)
    dots[:, 0] += 10
    positive = rng.rand(50) < 0.8
    got = losses.balanced_assignment_np(dots, positive, slack)
    p = int(positive.sum())
    cap = int(np.ceil(p * (1 + slack) / m))
    assert losses.head_capacity(p, m, slack) == cap
    np.testing.assert_array_equal(got.sum(axis=1), positive.astype(np.float32))
    assert got.sum(axis=0).max() <= cap
    assert got[:, 0].sum() == cap


def test_unlimited_capacity_is_argmax():
    rng = np.random.RandomState(3)
    dots = rng.normal(size=(20, 3)).astype(np.float32)
    got = losses.balanced_assignment_np(dots, np.ones(20, bool), 2.0)  # capacity = P
    np.testing.assert_array_equal(got, np.eye(3)[dots.argmax(axis=1)])


def test_gradient_reaches_only_the_assigned_head():
    rng = np.random.RandomState(0)
    q = rng.normal(size=(4, 2, 3)).astype(np.float32)
    items = rng.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([1, 1, 0, 1], np.float32)
    dots = np.einsum("bmd,bd->bm", q, items)
    assign = losses.balanced_assignment_np(dots, labels > 0.5, 0.0)
    qt = tf.constant(q)
    with tf.GradientTape() as tape:
        tape.watch(qt)
        scores = losses.balanced_positive_scores(qt, tf.constant(items), tf.constant(labels), 0.0)
        total = tf.reduce_sum(scores)
    grad = tape.gradient(total, qt).numpy()
    want_scores = np.where(labels > 0.5, (assign * dots).sum(axis=1), dots.max(axis=1))
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-5)
    for i in (0, 1, 3):
        a = int(assign[i].argmax())
        np.testing.assert_allclose(grad[i, a], items[i], rtol=1e-5)
        np.testing.assert_array_equal(grad[i, 1 - a], 0.0)


SMALL = dict(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
             item_hidden_units=(16,), adapter_hidden_units=(8,), num_heads=2)


def test_balanced_training_graph_scores_positives_by_their_assigned_head():
    """The positives' scores are replaced (set_diag) by the assigned heads' and the
    head-balance term is not added."""
    layout = FakeLayoutSpec()
    cfg = ModelConfig(head_assignment="balanced", **SMALL)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        features = FakeCatalog(layout).batch(12, 0, np.random.RandomState(0))
        spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                             {"model_config": cfg, "layout_spec": layout, "seed": 1})
        names = {op.name for op in tf.compat.v1.get_default_graph().get_operations()}
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            loss = sess.run(spec.loss)
    assert np.isfinite(loss)
    assert any("MatrixSetDiag" in n or "set_diag" in n for n in names)
    assert not any("balance_of_heads" in n for n in names)


def test_config_rejects_negative_slack():
    with pytest.raises(ValueError, match="head_capacity_slack"):
        ModelConfig(head_assignment="balanced", head_capacity_slack=-0.1, **SMALL).validate()
