"""ready_poll.polling_every: the SessionManager poll interval changes inside the block only."""
import pytest
import tensorflow as tf

from dpsr_tf.training import ready_poll

# tf.compat.v1.train.SessionManager's own default poll interval.
TF_DEFAULT_SECS = 30


def _poll_secs(**kwargs) -> float:
    with tf.Graph().as_default():
        return tf.compat.v1.train.SessionManager(**kwargs)._recovery_wait_secs  # pylint: disable=protected-access


def test_interval_applies_inside_the_block_and_is_restored_after():
    assert _poll_secs() == TF_DEFAULT_SECS
    with ready_poll.polling_every(1.5):
        assert _poll_secs() == 1.5
        assert _poll_secs(recovery_wait_secs=7) == 7  # an explicit keyword still wins
        with ready_poll.polling_every(0.25):
            assert _poll_secs() == 0.25
        assert _poll_secs() == 1.5
    assert _poll_secs() == TF_DEFAULT_SECS


def test_restored_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with ready_poll.polling_every(2.0):
            raise RuntimeError("training failed")
    assert _poll_secs() == TF_DEFAULT_SECS


def test_non_positive_interval_is_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        with ready_poll.polling_every(0):
            pass
    assert _poll_secs() == TF_DEFAULT_SECS
