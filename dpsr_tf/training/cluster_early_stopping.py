"""Early stopping on a cluster: the evaluator task decides, the chief and the workers obey.

The rule is early_stopping's (same metric, patience, min_delta, cap and early_stopping.json);
only who does what differs, because each task is its own process:

- evaluator: evaluates the newest checkpoint whenever one from a new eval_every_steps stretch
  appears, and the first at the cap (a cluster's saves land near, not on, the boundaries,
  since every worker moves the global step; an evaluator slower than the saves skips
  stretches, as TensorFlow's own evaluator skips checkpoints, so patience counts evaluations),
  records each in early_stopping.json and, when the rule says stop, records the stop there
  ("stopped", with this run's rule).
- chief and workers: a hook reads early_stopping.json (at most once a second) and ends
  training once it holds a stop under this run's rule, so a stale record of other settings
  stops nothing.
- the best checkpoint must outlive the chief's checkpoint rotation, which knows nothing of the
  evaluator: an evaluator slower than the saves (a loaded machine, a large eval split) decides
  after keep_checkpoint_max newer saves, when the chief's Saver has already deleted the best.
  So the evaluator first keeps each checkpoint it evaluates (hard links, or copies where the
  filesystem has none, under <model_dir>/KEPT_DIR), evaluates the kept files, and then
  keeps only the best's; pointing the state puts the best back beside the others if the
  rotation took it.
- the checkpoint state must name the best checkpoint, but only once the chief has saved its
  last checkpoint (its final save would name itself). The chief, done training, writes a
  "done" mark and then points the state at the best if the stop is recorded; the evaluator,
  having recorded the stop, points it if the mark is there. Each writes before it reads, so
  at least one of them sees the other's write and the last write leaves the best named.

Without an evaluator task nothing decides: the cluster trains to the cap (the chief's log says
so). The second phase (pseudo_query_plateau_ratio) runs on one machine only.
"""
import json
import os
import time
from typing import Callable, Iterable, List, Optional

import tensorflow as tf
from absl import logging

from dpsr_tf.training import early_stopping
from dpsr_tf.training.config import FULL_CORPUS_METRICS, TrainConfig

CHIEF_DONE_FILE = "early_stopping.chief_done"
# Where the evaluator keeps the checkpoint it evaluates and the best one so far.
KEPT_DIR = "evaluator_kept"
# How often the chief and the workers read the record: a stat and a small JSON read.
POLL_SECS = 1.0


def recorded_stop(model_dir: str, rule: dict) -> Optional[dict]:
    """The stop early_stopping.json records under `rule` (None: none, or another rule's)."""
    try:
        record = early_stopping.load_history(model_dir)
    except (json.JSONDecodeError, tf.errors.OpError):  # being replaced: read it next time
        return None
    return _stop_in(record, rule)


def _stop_in(record: dict, rule: dict) -> Optional[dict]:
    return record.get("stopped") if record.get("rule") == rule else None


class StopWhenRecorded(tf.estimator.SessionRunHook):
    """Ends a chief's or a worker's training once the evaluator has recorded a stop under
    this run's rule (read at most every `poll_secs`, and at the first step, so a task
    restarted after the stop ends at once)."""

    def __init__(self, model_dir: str, rule: dict, poll_secs: float = POLL_SECS,
                 clock: Callable[[], float] = time.monotonic):
        self._model_dir, self._rule, self._poll_secs, self._clock = (model_dir, rule,
                                                                     poll_secs, clock)
        self._last: Optional[float] = None
        self.reads = 0

    def after_run(self, run_context, run_values):
        now = self._clock()
        if self._last is not None and now - self._last < self._poll_secs:
            return
        self._last = now
        self.reads += 1
        stopped = recorded_stop(self._model_dir, self._rule)
        if stopped:
            logging.info("early stopping: the evaluator recorded a stop at step %d (%s); "
                         "training ends", stopped["step"], stopped["explanation"])
            run_context.request_stop()


def chief_started(model_dir: str, recorded: dict, log=logging.info) -> None:
    """At the chief's start: the previous run's done mark goes (the evaluator must not take it
    for this run's), and a finished run resumes from where it stopped."""
    path = os.path.join(model_dir, CHIEF_DONE_FILE)
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    early_stopping.resume_where_the_run_stopped(model_dir, recorded, log)


def chief_finished(model_dir: str, rule: dict, log=logging.info) -> Optional[str]:
    """After the chief's training: writes the done mark, then points the checkpoint state at
    the best if the evaluator has recorded the stop (else the evaluator will). Returns the
    best checkpoint's path when it pointed the state there."""
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, CHIEF_DONE_FILE), "w") as f:
        f.write(json.dumps({"time": time.time()}))
    return _point_at_best_if_stopped(model_dir, rule, log)


def _link_into(files: List[str], target_dir: str) -> None:
    """Hard-links (copies where the filesystem has none) each of `files` into target_dir,
    under the same name; a file already there is left as it is."""
    for source in files:
        target = os.path.join(target_dir, os.path.basename(source))
        if tf.io.gfile.exists(target):
            continue
        if "://" not in source:
            try:
                os.link(source, target)
                continue
            except FileExistsError:  # the other task put it back at the same moment
                continue
            except OSError:  # a filesystem without hard links
                pass
        tf.io.gfile.copy(source, target, overwrite=True)


def _checkpoint_files(prefix: str) -> List[str]:
    """The files of the checkpoint `prefix` (.index, .data-*, .meta); [] once it is gone."""
    files = tf.io.gfile.glob(prefix + ".*")
    return files if prefix + ".index" in files else []


def keep_checkpoint(model_dir: str, checkpoint: str) -> Optional[str]:
    """Links (or copies) `checkpoint`'s files into <model_dir>/KEPT_DIR, out of the chief's
    rotation; returns the kept prefix, or None when the rotation already deleted them."""
    files = _checkpoint_files(checkpoint)
    if not files:
        return None
    kept_dir = os.path.join(model_dir, KEPT_DIR)
    tf.io.gfile.makedirs(kept_dir)
    _link_into(files, kept_dir)
    kept = os.path.join(kept_dir, os.path.basename(checkpoint))
    return kept if _checkpoint_files(kept) else None


def _release_all_kept_but(model_dir: str, best_step: int) -> None:
    """Deletes the kept checkpoints other than model.ckpt-<best_step>."""
    keep = f"model.ckpt-{best_step}."
    for path in tf.io.gfile.glob(os.path.join(model_dir, KEPT_DIR, "model.ckpt-*")):
        if not os.path.basename(path).startswith(keep):
            tf.io.gfile.remove(path)


def _put_back_kept(model_dir: str, step: int) -> None:
    """Puts the kept model.ckpt-<step> back in model_dir where the chief's rotation deleted
    it (where it is still there, nothing changes)."""
    prefix = os.path.join(model_dir, f"model.ckpt-{step}")
    if _checkpoint_files(prefix):
        return
    _link_into(_checkpoint_files(os.path.join(model_dir, KEPT_DIR, f"model.ckpt-{step}")),
               model_dir)


def _point_at_best_if_stopped(model_dir: str, rule: dict, log) -> Optional[str]:
    record = early_stopping.load_history(model_dir)
    stopped = _stop_in(record, rule)
    if not stopped:
        return None
    _put_back_kept(model_dir, stopped["best_step"])
    restored = early_stopping.point_state_at_best(model_dir, record["history"], rule,
                                                  stopped["best_step"])
    log(f"stopped at step {stopped['step']:,}: {stopped['explanation']}; "
        + early_stopping.where_the_state_points(restored, stopped))
    return restored


def _due(step: int, history: List[dict], every: int, cap: int) -> bool:
    """Whether the evaluator evaluates a checkpoint it sees: one from an eval_every_steps
    stretch with no evaluation yet, or the first at or past the cap."""
    if not history:
        return step > 0
    last = history[-1]["global_step"]
    if step <= last:
        return False
    return step // every > last // every or (step >= cap > last)


def evaluate_as_it_trains(estimator, eval_input_fn: Callable, train: TrainConfig,
                          checkpoint_metrics: Optional[Callable[[str], dict]] = None,
                          checkpoints: Optional[Iterable[str]] = None, log=logging.info):
    """The evaluator task's early stopping (module docstring). Returns (the best evaluation's
    metrics, []), like tf.estimator.train_and_evaluate.

    Args:
      checkpoints: the checkpoint paths as they appear (default: tf.train.checkpoints_iterator
        over train.model_dir, which waits for each new one).
    """
    rule = early_stopping.rule_for(train)
    if train.early_stopping_metric in FULL_CORPUS_METRICS and checkpoint_metrics is None:
        raise ValueError(f"TrainConfig.early_stopping_metric={train.early_stopping_metric!r} "
                         "is a full-corpus metric: pass checkpoint_metrics")
    history = early_stopping.load_history(train.model_dir).get("history", [])
    early_stopping.check_recorded_metric(train, history)
    scorer = early_stopping.BoundaryEvaluator(estimator, eval_input_fn, train, rule, history,
                                              log, checkpoint_metrics)
    log(f"early stopping (cluster evaluator): evaluate {rule['metric']} on the "
        f"{train.eval_split!r} split every {train.eval_every_steps:,} steps, stop after "
        f"{train.early_stopping_patience} evaluations without a gain > "
        f"{train.early_stopping_min_delta:g} or at {train.max_train_steps:,} steps"
        + (f" ({len(history)} evaluations recorded)" if history else ""))
    if history:
        scorer.redecide()
    at_cap = bool(history) and history[-1]["global_step"] >= train.max_train_steps
    if not (scorer.decision and (scorer.decision.stop or at_cap)):
        if checkpoints is None:
            checkpoints = tf.train.checkpoints_iterator(train.model_dir)
        since = time.monotonic()
        for checkpoint in checkpoints:
            step = early_stopping.step_of(checkpoint)
            if _due(step, history, train.eval_every_steps, train.max_train_steps):
                kept = keep_checkpoint(train.model_dir, checkpoint)
                if kept is None:
                    log(f"early stopping: {checkpoint} was deleted by the chief's rotation "
                        "before it could be kept; the evaluator takes the next one")
                else:
                    scorer.evaluate(kept, time.monotonic() - since)
                    since = time.monotonic()
                    _release_all_kept_but(train.model_dir,
                                          history[scorer.decision.best_index]["global_step"])
                    if scorer.decision.stop:
                        break
            if step >= train.max_train_steps:
                break
    if not history:
        raise RuntimeError("early stopping: the evaluator recorded no evaluation")
    stopped = early_stopping.stop_record(history, scorer.decision, rule, phase=1)
    early_stopping.write_record(train.model_dir, rule, history, stopped)
    # Even past the cap the chief may save once more (its last save, a few steps on), so
    # only its done mark says it is done.
    if tf.io.gfile.exists(os.path.join(train.model_dir, CHIEF_DONE_FILE)):
        _point_at_best_if_stopped(train.model_dir, rule, log)
    else:
        log(f"early stopping: stop recorded at step {stopped['step']:,} "
            f"({stopped['explanation']}); the chief and the workers end their training, and "
            "the chief points the checkpoint state at the best")
    return history[scorer.decision.best_index], []
