"""prune_to keeps one checkpoint of a model directory: the others' files go, the state names
the kept one alone, and it still restores the values saved at its step."""
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.training import checkpoint_pruning


def _save_steps(model_dir, steps):
    """A v1 Saver's checkpoints of one variable worth `step` at each step (as Estimator's)."""
    with tf.Graph().as_default():
        v = tf.compat.v1.get_variable("v", shape=[3], initializer=tf.zeros_initializer())
        value = tf.compat.v1.placeholder(tf.float32, [])
        assign = v.assign(tf.fill([3], value))
        saver = tf.compat.v1.train.Saver(max_to_keep=10)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in steps:
                sess.run(assign, {value: float(step)})
                saver.save(sess, os.path.join(model_dir, "model.ckpt"), global_step=step)


def _prefixes(model_dir):
    return sorted({n.split(".")[1] for n in os.listdir(model_dir) if n.startswith("model.ckpt-")})


def test_prune_keeps_the_named_checkpoint_only_and_it_restores(tmp_path):
    model_dir = str(tmp_path)
    _save_steps(model_dir, [0, 100, 200, 300])
    (tmp_path / "graph.pbtxt").write_text("kept")
    sizes = sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir)
                if n.startswith(("model.ckpt-0.", "model.ckpt-200.", "model.ckpt-300.")))
    keep = os.path.join(model_dir, "model.ckpt-100")
    pruned = checkpoint_pruning.prune_to(model_dir, keep)
    assert pruned.kept == keep
    assert pruned.removed == [os.path.join(model_dir, f"model.ckpt-{s}") for s in (0, 200, 300)]
    assert pruned.freed_bytes == sizes
    assert _prefixes(model_dir) == ["ckpt-100"]
    assert (tmp_path / "graph.pbtxt").read_text() == "kept"
    assert tf.train.latest_checkpoint(model_dir) == keep
    assert list(tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths) == [keep]
    np.testing.assert_array_equal(tf.train.load_variable(keep, "v"), [100.0] * 3)
    again = checkpoint_pruning.prune_to(model_dir, keep)       # nothing more to do
    assert again.removed == [] and again.freed_bytes == 0


@pytest.mark.parametrize("name, message", [
    ("model.ckpt-999", "is not on disk"),
    ("other.ckpt-100", "is not a model.ckpt-N of"),
])
def test_a_checkpoint_that_is_not_there_prunes_nothing(tmp_path, name, message):
    model_dir = str(tmp_path)
    _save_steps(model_dir, [0, 100])
    before = sorted(os.listdir(model_dir))
    with pytest.raises(ValueError, match=message):
        checkpoint_pruning.prune_to(model_dir, os.path.join(model_dir, name))
    with pytest.raises(ValueError, match="is not a model.ckpt-N of"):
        checkpoint_pruning.prune_to(model_dir, str(tmp_path / "elsewhere" / "model.ckpt-100"))
    assert sorted(os.listdir(model_dir)) == before
