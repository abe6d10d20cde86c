"""head_assignment "annealed": the head-assignment term against entropies worked out by hand,
the beta schedule, and that the shared encoder's heads start apart (zero-initialized head
adapters are copies that receive the same gradient)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import losses
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_fn import dpsr_model_fn
from dpsr_tf.model.towers import query_tower
from tests.support.tiny_model import FakeCatalog, FakeLayoutSpec


def _entropy(p):
    p = np.asarray(p, np.float64)
    return float(-(p * np.log(p)).sum())


def test_assignment_term_by_hand():
    # Two heads on the axes; beta = 1. Positive 0's item (1, 0): dots (1, 0) -> w = (e/(e+1),
    # 1/(e+1)); positive 1's item (0, 2): dots (0, 2) -> w = (1/(1+e^2), e^2/(1+e^2)); example
    # 2 is a negative and does not count.
    q = np.tile(np.eye(2, dtype=np.float32)[None], (3, 1, 1))
    items = np.array([[1, 0], [0, 2], [5, 0]], np.float32)
    labels = np.array([1, 1, 0], np.float32)
    e = math.e
    w0 = [e / (e + 1), 1 / (e + 1)]
    w1 = [1 / (1 + e * e), e * e / (1 + e * e)]
    usage = [(w0[0] + w1[0]) / 2, (w0[1] + w1[1]) / 2]
    want = (_entropy(w0) + _entropy(w1)) / 2 - _entropy(usage)
    got = losses.head_assignment_loss(tf.constant(q), tf.constant(items), tf.constant(labels),
                                      1.0)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # Heads that are copies: every w = (1/2, 1/2): log 2 - log 2 = 0; confident, split: -log 2.
    same = np.ones((2, 2, 2), np.float32)
    assert float(losses.head_assignment_loss(tf.constant(same), tf.constant(items[:2]),
                                             tf.ones([2]), 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.head_assignment_loss(tf.constant(q[:2]), tf.constant(items[:2] * 50),
                                             tf.ones([2]), 1.0)) == pytest.approx(
        -math.log(2), abs=1e-4)
    assert float(losses.head_assignment_loss(tf.constant(q), tf.constant(items),
                                             tf.zeros([3]), 1.0)) == 0.0


@pytest.mark.parametrize("step,want", [(0, 0.1), (1000, 0.1 * 0.1 ** 0.5), (2000, 0.01),
                                       (9000, 0.01)])
def test_annealed_beta(step, want):
    got = losses.annealed_beta(0.1, 0.01, 2000, tf.constant(step, tf.int64))
    assert float(got) == pytest.approx(want, rel=1e-5)


SMALL = dict(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
             item_hidden_units=(16,), adapter_hidden_units=(8,), num_heads=2)


@pytest.mark.parametrize("assignment,apart", [("soft", False), ("annealed", True),
                                               ("balanced", True)])
def test_shared_encoder_heads_start_apart_only_when_annealed(assignment, apart):
    layout = FakeLayoutSpec()
    cfg = ModelConfig(head_assignment=assignment, **SMALL)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        features = FakeCatalog(layout).batch(8, 4, np.random.RandomState(0))
        heads = query_tower(features, cfg, layout)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            value = sess.run(heads)
    gap = np.abs(value[:, 0] - value[:, 1]).max()
    assert (gap > 1e-3) if apart else (gap == 0.0)


def test_annealed_training_graph_uses_the_assignment_term():
    """The loss with head_assignment "annealed" = the ranking loss at the scheduled beta +
    weight * the assignment term; the soft model's loss does not contain it."""
    layout = FakeLayoutSpec()
    values = {}
    for assignment in ("soft", "annealed"):
        cfg = ModelConfig(head_assignment=assignment, head_balance_weight=0.0,
                          head_assignment_weight=1.0, **SMALL)
        with tf.Graph().as_default():
            tf.compat.v1.set_random_seed(0)
            features = FakeCatalog(layout).batch(12, 0, np.random.RandomState(0))
            spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                                 {"model_config": cfg, "layout_spec": layout, "seed": 1})
            graph = tf.compat.v1.get_default_graph()
            names = {op.name for op in graph.get_operations()}
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                values[assignment] = sess.run(spec.loss)
            values[assignment + "_has_term"] = any("head_assignment" in n for n in names)
    assert values["annealed_has_term"] and not values["soft_has_term"]
    assert np.isfinite(values["annealed"])
