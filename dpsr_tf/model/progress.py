"""A SessionRunHook that logs training progress: global step, loss, steps/s and examples/s."""
import time

import tensorflow as tf
from absl import logging
from tensorflow.python.util import deprecation


class ProgressHook(tf.compat.v1.train.SessionRunHook):
    """Every `every_steps` local steps logs `step N: loss L (s steps/s, e examples/s)`."""

    def __init__(self, loss: tf.Tensor, batch_size: int, every_steps: int, task: str = ""):
        self._loss = loss
        self._batch_size = batch_size
        self._every = max(1, every_steps)
        self._task = f"[{task}] " if task else ""

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()
        self._count = 0
        self._start = None

    def before_run(self, run_context):
        del run_context
        if self._start is None:
            self._start = time.monotonic()
        self._count += 1
        if self._count % self._every == 0:
            return tf.compat.v1.train.SessionRunArgs([self._global_step, self._loss])
        return None

    def after_run(self, run_context, run_values):
        del run_context
        if run_values.results is None:
            return
        step, loss = run_values.results
        now = time.monotonic()
        elapsed = max(now - self._start, 1e-9)
        logging.info("%sstep %d: loss %.5f (%.2f local steps/s, %.1f examples/s)", self._task,
                     step, loss, self._every / elapsed, self._every * self._batch_size / elapsed)
        self._start = now


def quiet_tf_logging() -> None:
    """INFO lines through absl only (TF's own handler would print each twice) and no deprecation
    warnings of the tf.compat.v1 / Estimator APIs that this product is built on."""
    deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access
    logging.set_verbosity(logging.INFO)
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.INFO)
    tf.get_logger().handlers = []
