"""train_and_evaluate for DPSR: one function that every task of a cluster (or one process) runs.

The task's role comes from TF_CONFIG (chief / worker / ps / evaluator); without it the job
trains and evaluates in this process. The chief writes the resolved config into model_dir.
"""
import dataclasses
import json
import os
import socket
import time
from typing import Callable, Optional

import tensorflow as tf
from absl import logging

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import hard_negative_table, pipeline
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.layout import load_layout_spec
from dpsr_tf.model import distill, distill_cache
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_fn import dpsr_model_fn
from dpsr_tf.training import (catalog_scale, cluster_early_stopping, early_stopping,
                              ready_poll, tf_config)
from dpsr_tf.training.config import AUTO_EXAMPLES_PER_ITEM, FULL_CORPUS_METRICS, TrainConfig
from dpsr_tf.training.run_config import make_run_config


def make_estimator(model_config: ModelConfig, train: TrainConfig, layout_spec,
                   cluster: Optional[tf_config.ClusterInfo] = None) -> tf.estimator.Estimator:
    """The DPSR Estimator of this task (model_config must already be resolved)."""
    cluster = cluster or tf_config.from_env()
    params = {"model_config": model_config, "layout_spec": layout_spec,
              "batch_size": train.batch_size, "seed": train.seed,
              "log_every_steps": train.log_step_count_steps,
              "task": f"{cluster.task_type}:{cluster.task_index}" if cluster.distributed else "",
              "is_chief": cluster.is_chief}
    check_item_side(model_config, train)
    if train.teacher_dir:
        params["distill"] = distill.settings_for(train.teacher_dir, train.layout_dir,
                                                 train.distill_weight, train.distill_temperature,
                                                 train.teacher_max_queries,
                                                 train.distill_query_weight)
    warm_start = None
    if train.effective_warm_start:
        # Trainable variables only, and not the joint PQ quantizer (a model trained without
        # --joint_pq has none; its warm start is JointPQWarmStartHook's job).
        warm_start = tf.estimator.WarmStartSettings(train.effective_warm_start,
                                                    vars_to_warm_start="^(?!joint_pq/).*")
    return tf.estimator.Estimator(dpsr_model_fn, config=make_run_config(train, cluster),
                                  params=params, warm_start_from=warm_start)


def check_item_side(model_config: ModelConfig, train: TrainConfig) -> None:
    """ValueError with the fix when an --item_side=teacher run cannot train: no teacher, a
    stopping metric that needs an item tower, or another width than the teacher's. Cheap: `dpsr
    train` calls it before anything is computed or written."""
    if model_config.item_side != "teacher":
        if train.distill_query_weight:
            raise ValueError(f"--distill_query_weight={train.distill_query_weight:g} matches the "
                             "teacher's query vectors, which only a query encoder in the "
                             "teacher's space can: add --item_side=teacher, or leave it at 0")
        return
    if not train.teacher_dir:
        raise ValueError("--item_side=teacher: the items are a teacher's embeddings; name the "
                         "teacher with --teacher_dir (a model directory or a pretrained encoder)")
    if not train.train_steps and train.early_stopping_metric in FULL_CORPUS_METRICS:
        raise ValueError(f"--item_side=teacher: --early_stopping_metric="
                         f"{train.early_stopping_metric} embeds the catalog with the model's item "
                         "tower, and this model has none; keep top10 (the default) or loss")
    width = distill_cache.teacher_width(train.teacher_dir)
    if model_config.embedding_dim != width:
        raise ValueError(f"--item_side=teacher: --embedding_dim={model_config.embedding_dim} "
                         f"must equal the teacher's width {width} ({train.teacher_dir}); "
                         f"train with --embedding_dim={width}")


def default_input_fns(model_config: ModelConfig, train: TrainConfig,
                      cluster: tf_config.ClusterInfo, round_index: int = 0,
                      start_step: int = 0):
    """(train_input_fn, eval_input_fn) from dpsr_tf.data.pipeline over train.layout_dir.

    round_index: evaluations already recorded by a resumed early-stopping run; its training
      input gets its own seed, so it does not replay the interrupted run's examples.
    start_step: the global step the training input starts at (a resumed run): the
      pseudo-query schedule goes on from this replica's share of it.
    """
    spec = load_layout_spec(train.layout_dir)
    mix = train.pseudo_query_mix(spec.num_records.get("train", 0), "pseudo" in spec.record_files,
                                 start_step=start_step // cluster.num_replicas)
    logging.info("pseudo-queries: %.3f of the training examples at step 0%s%s%s", mix.ratio,
                 (" (auto)" if "pseudo" in spec.record_files else
                  " (auto; the layout has none: dpsr prepare --pseudo_queries_per_item=16 makes "
                  "them)") if train.pseudo_query_ratio < 0 else "",
                 f", {mix.final_ratio:.3f} from local step {mix.decay_steps:,} on"
                 if mix.final_ratio is not None and mix.decay_steps else "",
                 f"; resuming at local step {mix.start_step:,}, share "
                 f"{float(mix.at_step(0)):.3f}" if mix.start_step else "")
    texts = model_config.text_encoder == "pretrained"   # the encoder reads raw titles
    train_fn = pipeline.make_train_input_fn(
        train.layout_dir, batch_size=train.batch_size,
        num_random_negatives=max(1, model_config.random_negatives_for(train.batch_size)),
        shuffle_buffer=train.shuffle_buffer,
        seed=train.seed + 1000 * cluster.replica_index + 7919 * round_index,
        num_epochs=None, split="train",
        # Each training replica reads its own shard of the records.
        num_shards=cluster.num_replicas,
        shard_index=cluster.replica_index if cluster.task_type in ("chief", "worker") else 0,
        pseudo_mix=mix,
        # Joined human negatives cost an item-tower pass: only when the loss uses them.
        human_negatives=model_config.max_human_negatives
        if model_config.human_negative_weight > 0 and model_config.model != "dssm" else 0,
        # The mined hard negatives (checked by check_hard_negative_table before training).
        hard_negatives=model_config.max_hard_negatives if train.hard_negatives_from else 0,
        hard_negative_dir=train.model_dir, item_texts=texts)
    eval_fn = pipeline.make_eval_input_fn(
        train.layout_dir, batch_size=train.eval_batch_size,
        num_random_negatives=max(1, train.eval_random_negatives,
                                 model_config.random_negatives_for(train.eval_batch_size)),
        split=train.eval_split, item_texts=texts)
    return train_fn, eval_fn


def check_hard_negative_model(model_config: ModelConfig, train: TrainConfig) -> None:
    """With --hard_negatives_from: a model that can take them (checked before any mining)."""
    if train.hard_negatives_from and model_config.model == "dssm":
        raise ValueError(f"--hard_negatives_from={train.hard_negatives_from} with --model=dssm: "
                         f"the DSSM baseline keeps its paper's random negatives; drop one")
    if train.hard_negatives_from and model_config.hard_negative_weight <= 0:
        raise ValueError(
            f"--hard_negatives_from={train.hard_negatives_from} with --hard_negative_weight="
            f"{model_config.hard_negative_weight:g}: the mined negatives would not reach the "
            "loss; set a weight > 0 or drop --hard_negatives_from")


def plateau_phase_input_fn(model_config: ModelConfig, train: TrainConfig,
                           cluster: tf_config.ClusterInfo, layout_spec
                           ) -> Optional[Callable[[int], Callable]]:
    """--pseudo_query_plateau_ratio: round -> the training input_fn of early stopping's second
    phase (the pseudo-query share held at the plateau ratio), or None where the run's own share
    never exceeds it (off, no pseudo-queries, or an auto share already at the floor)."""
    plateau = train.pseudo_query_plateau_ratio
    if plateau < 0 or "pseudo" not in layout_spec.record_files:
        return None
    mix = train.pseudo_query_mix(layout_spec.num_records.get("train", 0), True)
    at_plateau = mix.ratio if mix.final_ratio is None or not mix.decay_steps else mix.final_ratio
    if at_plateau <= plateau:
        return None
    second = dataclasses.replace(train, pseudo_query_ratio=plateau,
                                 pseudo_query_final_ratio=-1.0, pseudo_query_decay_steps=0)
    logging.info("early stopping: at the first plateau the pseudo-query share goes from %.3f "
                 "to %.3f (--pseudo_query_plateau_ratio)", at_plateau, plateau)
    return lambda r: default_input_fns(model_config, second, cluster, round_index=r)[0]


def check_hard_negative_table(model_config: ModelConfig, train: TrainConfig,
                              layout_spec) -> None:
    """With --hard_negatives_from: the mined table must be in model_dir and made from that
    model with these settings (`dpsr train` mines it first, dpsr_tf/indexing/hard_negatives.py).

    Raises:
      ValueError: dssm, no table, or a table mined with other settings.
    """
    if not train.hard_negatives_from:
        return
    check_hard_negative_model(model_config, train)
    prov = hard_negative_table.read_provenance(train.model_dir)
    where = hard_negative_table.table_dir(train.model_dir)
    if prov is None:
        raise ValueError(f"--hard_negatives_from={train.hard_negatives_from}: no mined table in "
                         f"{where}; `dpsr train` mines it before training (from code: "
                         f"dpsr_tf.indexing.hard_negatives.mine_hard_negatives)")
    want = {"source_model_dir": hard_negative_table.absolute(train.hard_negatives_from),
            "ranks": list(train.hard_negative_ranks),
            "per_query": train.hard_negatives_per_query,
            "splits": list(hard_negative_table.mined_splits(train.hard_negative_split_names,
                                                            layout_spec)),
            "num_queries": layout_spec.num_queries, "num_items": layout_spec.num_items}
    wrong = {k: (prov.get(k), v) for k, v in want.items() if prov.get(k) != v}
    if wrong:
        raise ValueError(f"{where} was mined with other settings ({wrong}: table vs flags); "
                         f"delete it (or use a new --model_dir) to mine again")


# A non-chief task of a cluster waits this long for the chief's teacher embeddings.
_TEACHER_WAIT_SECS = 4 * 3600


def _teacher_cache(train: TrainConfig, cluster: tf_config.ClusterInfo) -> None:
    """--teacher_dir: the chief (or the one local process) computes the teacher's embeddings
    or reuses them; the other tasks of a cluster wait for them."""
    log = lambda m: logging.info("%s", m)  # noqa: E731
    if not cluster.distributed or cluster.is_chief:
        distill_cache.ensure_teacher_cache(train.teacher_dir, train.layout_dir,
                                           train.teacher_max_queries, log=log)
    else:
        distill_cache.wait_for_cache(train.teacher_dir, train.layout_dir,
                                     train.teacher_max_queries, _TEACHER_WAIT_SECS)
    logging.info("distillation from %s: weight %g, temperature %g, query vectors %g",
                 train.teacher_dir, train.distill_weight, train.distill_temperature,
                 train.distill_query_weight)


def train_and_evaluate(model_config: ModelConfig, train: TrainConfig, *, layout_spec=None,
                       train_input_fn: Optional[Callable] = None,
                       eval_input_fn: Optional[Callable] = None,
                       checkpoint_metrics: Optional[Callable[[str], dict]] = None):
    """Runs this task's part of tf.estimator.train_and_evaluate.

    Args:
      model_config: ModelConfig (embedding_partitions 0 is resolved here from the cluster).
      train: TrainConfig.
      layout_spec: default: dpsr_tf.data.layout.load_layout_spec(train.layout_dir).
      train_input_fn, eval_input_fn: default: dpsr_tf.data.pipeline over train.layout_dir.
      checkpoint_metrics: early stopping on one machine: checkpoint -> {name: value} added to
        each evaluation (needed for a "recall@K" early_stopping_metric).

    Returns:
      what tf.estimator.train_and_evaluate returns (eval metrics, export results) on the chief
      or a local run; None on other tasks.
    """
    cluster = tf_config.from_env()
    with ready_poll.polling_every(train.ready_poll_secs):
        return _train_and_evaluate(model_config, train, cluster, layout_spec, train_input_fn,
                                   eval_input_fn, checkpoint_metrics)


def _train_and_evaluate(model_config: ModelConfig, train: TrainConfig,
                        cluster: tf_config.ClusterInfo, layout_spec,
                        train_input_fn: Optional[Callable], eval_input_fn: Optional[Callable],
                        checkpoint_metrics: Optional[Callable[[str], dict]] = None):
    if layout_spec is None:
        layout_spec = layout_lib.load_layout_spec(train.layout_dir)
    # Early stopping reads the validation split carved from the training queries (the eval
    # split only on a layout without one); the resolved name is what dpsr_config.json records.
    train = dataclasses.replace(train, eval_split=eval_set_lib.watched_split(
        train.eval_split, layout_spec, log=logging.warning))
    if train.stops_early:
        auto_cap = not train.max_train_steps
        train = train.resolved(layout_spec.num_items)
        # On a cluster the evaluator decides a little after each save, and the chief reacts
        # a little after that: two more rounds of checkpoints keep the best meanwhile.
        train = _early_stopping_settings(train, extra_rounds=2 if cluster.distributed else 0)
        logging.info(
            "training length: early stopping on the %r split, at most %d steps%s; set "
            "--train_steps for a fixed length", train.eval_split, train.max_train_steps,
            f" (auto: about {AUTO_EXAMPLES_PER_ITEM} examples per item over "
            f"{layout_spec.num_items} items, batch {train.batch_size})" if auto_cap else "")
    scaled = train.catalog_scaling and catalog_scale.applies(model_config,
                                                             layout_spec.num_items)
    if scaled:
        model_config, widened = catalog_scale.scaled_model_config(model_config,
                                                                  layout_spec.num_items)
        train = catalog_scale.scaled_train_config(
            train.resolved(layout_spec.num_items), layout_spec.num_items,
            num_replicas=cluster.num_replicas)
        logging.info("%s", catalog_scale.describe(layout_spec.num_items, widened, train))
    # A record file cut at a record boundary would otherwise train silently on what is left.
    layout_lib.verify_record_files(train.layout_dir)
    cfg = model_config.resolved(cluster.num_ps).with_graph(layout_spec)
    train = early_stopping.bounded_logged_evaluation(train, cfg.text_encoder, logging.info)
    check_hard_negative_table(cfg, train, layout_spec)
    check_item_side(cfg, train)    # before the cache is computed or the config written
    if train.teacher_dir:
        _teacher_cache(train, cluster)
    if train.hard_negatives_from:
        logging.info("hard negatives: up to %d per example from %s (weight %g); towers %s",
                     cfg.max_hard_negatives, train.hard_negatives_from, cfg.hard_negative_weight,
                     f"warm-started from {train.effective_warm_start}"
                     if train.effective_warm_start else "trained from scratch")
    if cluster.task_type in ("chief",):
        try:
            path = model_dir_lib.write_resolved_config(
                train.model_dir, cfg, layout_spec,
                extra={"train": train.to_dict(), "cluster": cluster.cluster,
                       "written_by": {"host": socket.gethostname(), "time": time.time()}})
        except ValueError as e:
            if not scaled:
                raise
            # A directory trained before the large-catalog defaults existed has the narrow towers.
            raise ValueError(f"{e} This run's widths come from the large-catalog defaults "
                             "(docs/training.md 'Large catalogs'); --nocatalog_scaling trains "
                             "with the small-catalog defaults.") from None
        logging.info("resolved config written to %s", path)
    supplied_train_fn = train_input_fn is not None
    if train_input_fn is None or eval_input_fn is None:
        default_train, default_eval = default_input_fns(
            cfg, train, cluster,
            start_step=early_stopping.step_of(tf.train.latest_checkpoint(train.model_dir)))
        train_input_fn = train_input_fn or default_train
        eval_input_fn = eval_input_fn or default_eval
    estimator = make_estimator(cfg, train, layout_spec, cluster)
    logging.info("task %s:%d of cluster %s; model: %s", cluster.task_type, cluster.task_index,
                 cluster.cluster or "(local)", cfg.to_dict())
    start = time.monotonic()
    if train.stops_early and not cluster.distributed:
        given = train_input_fn if supplied_train_fn else None
        result = early_stopping.train_with_early_stopping(
            estimator,
            lambda r: given or default_input_fns(
                cfg, train, cluster, round_index=r,
                start_step=early_stopping.step_of(estimator.latest_checkpoint()))[0],
            eval_input_fn, train, checkpoint_metrics=checkpoint_metrics,
            second_phase_input_fn_for_round=None if given else
            plateau_phase_input_fn(cfg, train, cluster, layout_spec))
        _write_train_time(train, estimator, time.monotonic() - start)
        return result
    if train.stops_early:
        return _early_stopping_on_cluster(estimator, train_input_fn, eval_input_fn, train,
                                          cluster, checkpoint_metrics, start)
    train_spec = tf.estimator.TrainSpec(train_input_fn, max_steps=train.step_budget)
    eval_spec = tf.estimator.EvalSpec(eval_input_fn, steps=train.eval_steps,
                                      start_delay_secs=0, throttle_secs=train.throttle_secs)
    result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    if cluster.is_chief:
        _write_train_time(train, estimator, time.monotonic() - start)
    return result


def _early_stopping_on_cluster(estimator, train_input_fn, eval_input_fn, train: TrainConfig,
                               cluster: tf_config.ClusterInfo, checkpoint_metrics, start: float):
    """This task's part of early stopping on a cluster (cluster_early_stopping): the evaluator
    decides, the chief and the workers train until it records a stop."""
    if cluster.task_type == "evaluator":
        return cluster_early_stopping.evaluate_as_it_trains(
            estimator, eval_input_fn, train, checkpoint_metrics)
    rule = early_stopping.rule_for(train)
    if cluster.is_chief:
        logging.info("early stopping on a cluster: the evaluator task evaluates every %d steps "
                     "and records when to stop; without an evaluator task this cluster trains "
                     "the max_train_steps=%d cap", train.eval_every_steps,
                     train.max_train_steps)
        if train.pseudo_query_plateau_ratio >= 0:
            logging.info("--pseudo_query_plateau_ratio: the second phase runs on one machine "
                         "only; this cluster stops at the first plateau")
        cluster_early_stopping.chief_started(train.model_dir,
                                             early_stopping.load_history(train.model_dir))
    hooks = [] if cluster.task_type == "ps" else [
        cluster_early_stopping.StopWhenRecorded(train.model_dir, rule)]
    train_spec = tf.estimator.TrainSpec(train_input_fn, max_steps=train.max_train_steps,
                                        hooks=hooks)
    # The EvalSpec is unused: no task of this cluster runs TensorFlow's evaluator loop.
    eval_spec = tf.estimator.EvalSpec(eval_input_fn, steps=train.eval_steps)
    result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    if cluster.is_chief:
        cluster_early_stopping.chief_finished(train.model_dir, rule)
        _write_train_time(train, estimator, time.monotonic() - start)
    return result


def _write_train_time(train: TrainConfig, estimator, seconds: float) -> None:
    """<model_dir>/train_time.json: wall seconds of this `dpsr train` process (the report's
    Table 2 time column) and the checkpoint it left (the best one under early stopping)."""
    latest = estimator.latest_checkpoint()
    with tf.io.gfile.GFile(os.path.join(train.model_dir, model_dir_lib.TRAIN_TIME_FILE), "w") as f:
        f.write(json.dumps({"seconds": round(seconds, 1), "checkpoint": latest,
                            "length": "early stopping" if train.stops_early else
                            f"fixed train_steps={train.train_steps}"}, indent=2))


def _early_stopping_settings(train: TrainConfig, extra_rounds: int = 0) -> TrainConfig:
    """Saves a checkpoint at every evaluation boundary and keeps enough checkpoints that the
    best evaluation's survives `patience` (+ extra_rounds) more evaluations."""
    if train.eval_every_steps % train.save_checkpoints_steps:
        logging.info("early stopping: checkpoints every %d steps (save_checkpoints_steps=%d "
                     "does not divide eval_every_steps)", train.eval_every_steps,
                     train.save_checkpoints_steps)
        train = dataclasses.replace(train, save_checkpoints_steps=train.eval_every_steps)
    per_round = train.eval_every_steps // train.save_checkpoints_steps
    keep = (train.early_stopping_patience + 1 + extra_rounds) * per_round + 1
    if train.keep_checkpoint_max < keep:
        train = dataclasses.replace(train, keep_checkpoint_max=keep)
    return train
