"""Warm restarts of the optimizer state, hand-worked: loss = sum(w), so every step adds a
squared gradient of 1 to each Adagrad accumulator (initial value 0.1)."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import optimizer_restarts
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_fn import make_optimizer


def _run(optimizer_name, every, steps, start_step=0):
    """Trains `steps` steps from global step start_step with the hook; returns (the
    optimizer's variables by name after each step, the hook)."""
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=tf.zeros([3]))
        step = tf.compat.v1.train.get_or_create_global_step()
        optimizer = make_optimizer(ModelConfig(optimizer=optimizer_name, learning_rate=0.1))
        train_op = optimizer.minimize(tf.reduce_sum(w), global_step=step)
        hook = optimizer_restarts.restart_hook(optimizer, step, every)
        start = step.assign(start_step)
        names = {v.op.name: v for v in optimizer.variables()}
        seen = []

        class _Init(tf.compat.v1.train.SessionRunHook):   # the resumed step, before the hook
            def after_create_session(self, session, coord):
                session.run(start)
        with tf.compat.v1.train.MonitoredSession(hooks=[_Init(), hook]) as session:
            for _ in range(steps):
                session.run(train_op)
                seen.append(session.run(names))
        return seen, hook


def test_adagrad_accumulators_restart_at_each_boundary():
    seen, hook = _run("adagrad", every=3, steps=7)
    accumulator = [float(s["w/Adagrad"][0]) for s in seen]
    # after steps 1..7: 1.1, 2.1, reset at 3 -> 0.1, 1.1, 2.1, reset at 6 -> 0.1, 1.1
    np.testing.assert_allclose(accumulator, [1.1, 2.1, 0.1, 1.1, 2.1, 0.1, 1.1], rtol=1e-6)
    assert hook.restarts == 2


def test_a_resumed_run_counts_from_its_global_step():
    seen, hook = _run("adagrad", every=3, steps=4, start_step=4)
    # global steps 5, 6 (reset), 7, 8
    np.testing.assert_allclose([float(s["w/Adagrad"][0]) for s in seen],
                               [1.1, 0.1, 1.1, 2.1], rtol=1e-6)
    assert hook.restarts == 1


def test_adam_moments_and_beta_powers_restart():
    seen, _ = _run("adam", every=2, steps=3)
    # Adam's beta1 power is 0.9 ** t after t updates; a reset puts it back to 0.9.
    np.testing.assert_allclose([float(s["beta1_power"]) for s in seen], [0.81, 0.9, 0.81],
                               rtol=1e-6)
    assert float(seen[1]["w/Adam"][0]) == 0.0 and float(seen[2]["w/Adam"][0]) != 0.0


def test_bad_values():
    with pytest.raises(ValueError, match="optimizer_restart_steps"):
        ModelConfig(optimizer_restart_steps=-1).validate()
    with pytest.raises(ValueError, match="must be >= 1"):
        optimizer_restarts.OptimizerRestartHook(None, None, 0)


def test_model_fn_restarts_every_slot_of_a_partitioned_model():
    """Through dpsr_model_fn (embeddings in 2 partitions): after the step that reaches the
    boundary every Adagrad accumulator is back at 0.1, before it none is."""
    from tests.model.test_model_fn import SMALL  # pylint: disable=import-outside-toplevel
    from tests.support.tiny_model import FakeCatalog, FakeLayoutSpec  # pylint: disable=import-outside-toplevel
    from dpsr_tf.model.model_fn import dpsr_model_fn  # pylint: disable=import-outside-toplevel
    layout = FakeLayoutSpec()
    cfg = ModelConfig(embedding_partitions=2, optimizer_restart_steps=2, **SMALL)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        features = FakeCatalog(layout).batch(8, 6, np.random.RandomState(0), labels=[1] * 8)
        spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                             {"model_config": cfg, "layout_spec": layout, "seed": 1})
        slots = [v for v in tf.compat.v1.global_variables() if v.op.name.endswith("/Adagrad")]
        assert len(slots) == len(tf.compat.v1.trainable_variables())
        assert any("/part_1/" in v.op.name for v in slots)
        with tf.compat.v1.train.MonitoredSession(hooks=spec.training_hooks) as session:
            session.run(spec.train_op)
            after_1 = session.run(slots)
            session.run(spec.train_op)
            after_2 = session.run(slots)
    assert all(np.all(a == np.float32(0.1)) for a in after_2)
    assert sum(int(np.any(a != np.float32(0.1))) for a in after_1) > len(slots) // 2
