"""dpsr train: train (and evaluate) a DPSR model with tf.estimator.train_and_evaluate.

On one machine: `dpsr train --layout_dir=L --model_dir=M [--flagfile=F]`. On a cluster, run the
same command on every host with its own TF_CONFIG (chief, workers, ps, evaluator; see
docs/training.md), or start a loopback cluster with `dpsr launch-local`. The resolved config is
written to <model_dir>/dpsr_config.json by the chief.
"""

import dataclasses
import os

import tensorflow as tf
from absl import logging

from dpsr_tf.cli import training_flags
from dpsr_tf.data import hard_negative_table
from dpsr_tf.data.layout import load_layout_spec
from dpsr_tf.evaluation import checkpoint_recall
from dpsr_tf.indexing import hard_negatives
from dpsr_tf.model import distill_cache
from dpsr_tf.training import driver, early_stopping, tf_config
from dpsr_tf.model.progress import quiet_tf_logging

# A non-chief task of a cluster waits this long for the chief's mined table.
_TABLE_WAIT_SECS = 4 * 3600


def _mine(train) -> None:
    """--hard_negatives_from: the chief (or the one local process) mines the table into
    model_dir; the other tasks of a cluster wait for it."""
    cluster = tf_config.from_env()
    if not cluster.distributed or cluster.is_chief:
        tf.io.gfile.makedirs(train.model_dir)
        hard_negatives.mine_hard_negatives(
            train.hard_negatives_from, train.layout_dir, train.model_dir,
            ranks=train.hard_negative_ranks, per_query=train.hard_negatives_per_query,
            splits=train.hard_negative_split_names, seed=train.seed,
            log=lambda m: logging.info("%s", m))
        return
    # Wait for the table of these settings: one an earlier run left in model_dir is replaced
    # by the chief, and reading it meanwhile would train on another mining's negatives.
    want = hard_negatives.table_key(
        train.hard_negatives_from, load_layout_spec(train.layout_dir),
        ranks=train.hard_negative_ranks, per_query=train.hard_negatives_per_query,
        splits=train.hard_negative_split_names, seed=train.seed)
    if hard_negative_table.wait_for_table(train.model_dir, want, _TABLE_WAIT_SECS) is None:
        raise SystemExit(f"dpsr train: no hard-negative table of {want} from the chief in "
                         f"{hard_negative_table.table_dir(train.model_dir)} after "
                         f"{_TABLE_WAIT_SECS} s")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr train: unexpected arguments {argv[1:]}")
    quiet_tf_logging()
    try:
        model_config = training_flags.model_config_from_flags()
        train_config = training_flags.train_config_from_flags()
        if train_config.stops_early:
            early_stopping.check_recorded_metric(train_config)
        if train_config.teacher_dir:   # a bad teacher fails here, before anything is built
            distill_cache.cache_key(train_config.teacher_dir,
                                    load_layout_spec(train_config.layout_dir),
                                    train_config.teacher_max_queries)
            # Recorded absolute: `dpsr index --encoder_query_dir` compares it from elsewhere.
            train_config = dataclasses.replace(
                train_config, teacher_dir=os.path.abspath(train_config.teacher_dir))
        driver.check_item_side(model_config, train_config)
        if train_config.hard_negatives_from:
            driver.check_hard_negative_model(model_config, train_config)
            _mine(train_config)
            driver.check_hard_negative_table(model_config, train_config,
                                             load_layout_spec(train_config.layout_dir))
    except ValueError as e:
        raise SystemExit(f"dpsr train: {e}") from None
    result = driver.train_and_evaluate(
        model_config, train_config, checkpoint_metrics=checkpoint_recall.for_training(
            train_config, log=lambda m: logging.info("%s", m)))
    if result and result[0]:
        logging.info("final evaluation: %s", result[0])
