"""dpsr train: train (and evaluate) a DPSR model with tf.estimator.train_and_evaluate.

On one machine: `dpsr train --layout_dir=L --model_dir=M [--flagfile=F]`. On a cluster, run the
same command on every host with its own TF_CONFIG (chief, workers, ps, evaluator; see
docs/training.md), or start a loopback cluster with `dpsr launch-local`. The resolved config is
written to <model_dir>/dpsr_config.json by the chief.
"""
import tensorflow as tf
from absl import logging

from dpsr_tf.cli import training_flags
from dpsr_tf.training import driver
from dpsr_tf.model.progress import quiet_tf_logging


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr train: unexpected arguments {argv[1:]}")
    quiet_tf_logging()
    try:
        model_config = training_flags.model_config_from_flags()
        train_config = training_flags.train_config_from_flags()
    except ValueError as e:
        raise SystemExit(f"dpsr train: {e}") from None
    result = driver.train_and_evaluate(model_config, train_config)
    if result and result[0]:
        logging.info("final evaluation: %s", result[0])
