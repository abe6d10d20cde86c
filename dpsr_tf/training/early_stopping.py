"""The default training length: stop when validation stops improving.

The rule (TrainConfig.train_steps = 0): train in one session and, each time a checkpoint is
saved at a multiple of eval_every_steps (or at max_train_steps), evaluate it on
TrainConfig.eval_split, the layout's validation split carved from the training queries (the
driver resolves it: data/eval_set.watched_split; never the eval split a report reads, unless the
layout has no validation split), eval_steps batches or all of it, and record every metric. An
evaluation improves when its early_stopping_metric beats the best so far by more than
early_stopping_min_delta (higher is better; lower for "loss"). Training stops after the first
evaluation that leaves early_stopping_patience evaluations in a row without improvement, or when
the global step reaches max_train_steps, whichever comes first. Then the model directory's
checkpoint state names the best evaluation's checkpoint (when it was kept), so export, indexing
and evaluation read the best model, not the last one.

A second phase (TrainConfig.pseudo_query_plateau_ratio, when the driver passes its input): at
the first stop, training goes on from the last checkpoint with the second phase's input (a
smaller pseudo-query share) and the rule starts over on that phase's evaluations alone; the
best checkpoint is then the best of both phases. Each recorded evaluation names its phase.

The history, the rule and why training stopped are written to <model_dir>/early_stopping.json
(EARLY_STOPPING_FILE) after every evaluation, so an interrupted run resumes with its history,
and a finished one from the step where it stopped (a second phase turned on, or a raised cap,
goes on from there; the same settings train nothing more).

A "recall@K" metric is not one of the Estimator's eval metrics (those score each example against
its batch and random items): the caller passes `checkpoint_metrics`, a function checkpoint ->
{name: value} (dpsr_tf/evaluation/checkpoint_recall.py: full-corpus recall on that split),
whose values join each evaluation's record.

Training is one Estimator.train call with one input pipeline: the evaluations run from a
CheckpointSaverListener inside it, so no graph is rebuilt, no checkpoint restored and no
shuffle buffer refilled between evaluations. A resumed run starts its input with its own
seed (seed + evaluations so far), so it does not replay the interrupted run's examples.
"""
import dataclasses
import json
import os
import time
from typing import Callable, List, Optional

import tensorflow as tf
from absl import logging

from dpsr_tf.training.config import FULL_CORPUS_METRICS, TrainConfig

EARLY_STOPPING_FILE = "early_stopping.json"
STOPPED_NO_IMPROVEMENT = "no_improvement"
STOPPED_MAX_STEPS = "max_train_steps"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rule says after an evaluation: stop or go on, and the best evaluation so far."""
    stop: bool
    best_index: int
    evaluations_since_best: int


def decide(values: List[float], patience: int, min_delta: float,
           higher_is_better: bool = True) -> Decision:
    """The rule over the metric values of the evaluations so far, in order.

    The best is the first evaluation, then each later one that beats the current best by more
    than min_delta; stop once `patience` evaluations came after the best.
    """
    if not values:
        raise ValueError("decide: no evaluations yet")
    best_index = 0
    for i, value in enumerate(values[1:], start=1):
        gain = value - values[best_index] if higher_is_better else values[best_index] - value
        if gain > min_delta:
            best_index = i
    since = len(values) - 1 - best_index
    return Decision(since >= patience, best_index, since)


def _last_phase(history: List[dict]) -> int:
    """The phase of the latest recorded evaluation (1 for none, or for a history that predates
    phases)."""
    return max((h.get("phase", 1) for h in history), default=1)


def phase_decision(history: List[dict], metric: str, patience: int, min_delta: float,
                   higher_is_better: bool = True, min_step: int = 0) -> Decision:
    """The rule over a history whose evaluations may name a phase (1 when absent): stop when the
    latest phase's own evaluations leave `patience` without a gain; best over all phases.

    Evaluations before global step min_step (TrainConfig.early_stopping_min_steps: the
    pseudo-query share is still falling, so the examples have not reached the mix the run is
    for) are recorded but neither stop the run nor count as its best; until one at or after
    min_step exists the decision is to go on, with the latest evaluation as the best so far."""
    eligible = [i for i, h in enumerate(history) if not min_step or h["global_step"] >= min_step]
    if history and not eligible:
        return Decision(False, len(history) - 1, 0)
    judged = [history[i] for i in eligible]
    phase = _last_phase(judged)
    current = decide([h[metric] for h in judged if h.get("phase", 1) == phase], patience,
                     min_delta, higher_is_better)
    overall = decide([h[metric] for h in judged], patience, min_delta, higher_is_better)
    return Decision(current.stop, eligible[overall.best_index], current.evaluations_since_best)


def _history_path(model_dir: str) -> str:
    return os.path.join(model_dir, EARLY_STOPPING_FILE)


def load_history(model_dir: str) -> dict:
    """The early_stopping.json of a model directory ({} when it has none)."""
    path = _history_path(model_dir)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _write(model_dir: str, record: dict) -> None:
    path = _history_path(model_dir)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _point_checkpoint_state_at(model_dir: str, step: int) -> Optional[str]:
    """Makes <model_dir>/checkpoint name model.ckpt-<step> when it still exists; returns it."""
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return None
    paths = list(state.all_model_checkpoint_paths)
    # A checkpoint kept out of the list (_keep_out_of_rotation) is found on disk.
    wanted = [p for p in paths if p.endswith(f"model.ckpt-{step}")] or [
        os.path.join(model_dir, f"model.ckpt-{step}")]
    if not tf.io.gfile.glob(wanted[0] + ".index"):
        return None
    # The best stays the newest entry, so no later save removes it first.
    others = [p for p in paths if p != wanted[0]]
    tf.compat.v1.train.update_checkpoint_state(model_dir, wanted[0],
                                               all_model_checkpoint_paths=others + wanted)
    return wanted[0]


def _keep_out_of_rotation(model_dir: str, step: int) -> None:
    """Takes model.ckpt-<step> off the checkpoint state's list, so the next training session's
    Saver (which deletes only the checkpoints it knows, beyond keep_checkpoint_max) leaves it:
    the first phase's best must survive a second phase of any length."""
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return
    others = [p for p in state.all_model_checkpoint_paths
              if not p.endswith(f"model.ckpt-{step}")]
    if len(others) < len(state.all_model_checkpoint_paths):
        tf.compat.v1.train.update_checkpoint_state(model_dir, state.model_checkpoint_path,
                                                   all_model_checkpoint_paths=others)


def _drop_kept_checkpoints(model_dir: str, history: List[dict], rule: dict,
                           best_step: int) -> None:
    """Deletes the checkpoints _keep_out_of_rotation kept at each phase switch (the best of the
    phases before it) that did not stay the best of the run."""
    last_phase = _last_phase(history)
    state = tf.train.get_checkpoint_state(model_dir)
    listed = set(state.all_model_checkpoint_paths) if state else set()
    for phase in range(1, last_phase):
        before = [h for h in history if h.get("phase", 1) <= phase]
        kept = before[phase_decision(before, rule["metric"], rule["patience"],
                                     rule["min_delta"], rule["higher_is_better"],
                                     rule.get("min_steps", 0)).best_index]
        prefix = os.path.join(model_dir, f"model.ckpt-{kept['global_step']}")
        if kept["global_step"] != best_step and prefix not in listed:
            for path in tf.io.gfile.glob(prefix + ".*"):
                tf.io.gfile.remove(path)


def check_recorded_metric(train: TrainConfig, history: Optional[List[dict]] = None) -> None:
    """A resumed run watches the metric its recorded evaluations (`history`, default: read from
    model_dir) hold (ValueError otherwise)."""
    metric = train.early_stopping_metric
    if history is None:
        history = load_history(train.model_dir).get("history", [])
    lacking = [h["global_step"] for h in history if metric not in h]
    if lacking:
        raise ValueError(
            f"TrainConfig.early_stopping_metric={metric!r}: the evaluations recorded in "
            f"{_history_path(train.model_dir)} at steps {lacking} have no {metric!r} (the run "
            f"began with another metric); resume with that metric or use a new model_dir")


# Batches of the Estimator's in-batch evaluation when a pretrained encoder stops on a
# full-corpus recall and --eval_steps is not given. That evaluation then only logs (the stopping
# choice embeds each catalog item once), yet through the transformer it runs every validation
# example, its item and the random negatives: minutes per evaluation on MovieLens 100K's 31,200
# validation examples on 2 cores, against under one with 8 batches (docs/training.md).
PRETRAINED_LOGGED_EVAL_STEPS = 8


def bounded_logged_evaluation(train: TrainConfig, text_encoder: str, log) -> TrainConfig:
    """`train` with eval_steps bounded to PRETRAINED_LOGGED_EVAL_STEPS where the in-batch
    evaluation only logs and runs a pretrained encoder (above); unchanged otherwise, and always
    when --eval_steps was given."""
    if (text_encoder != "pretrained" or not train.stops_early or train.eval_steps is not None
            or train.early_stopping_metric not in FULL_CORPUS_METRICS):
        return train
    log(f"early stopping on {train.early_stopping_metric} embeds the catalog itself; the "
        f"Estimator's in-batch evaluation beside it (logged only) runs "
        f"{PRETRAINED_LOGGED_EVAL_STEPS} batches through the pretrained encoder, not the whole "
        f"{train.eval_split!r} split (--eval_steps to change)")
    return dataclasses.replace(train, eval_steps=PRETRAINED_LOGGED_EVAL_STEPS)


def _as_floats(metrics: dict) -> dict:
    return {k: (int(v) if k == "global_step" else float(v)) for k, v in metrics.items()}


class BoundaryEvaluator(tf.estimator.CheckpointSaverListener):
    """Evaluates the checkpoints saved at each eval_every_steps boundary (and at the cap) from
    inside the one training session, records them, and asks training to stop when the rule
    says so (after_save returning True stops Estimator.train)."""

    def __init__(self, estimator, eval_input_fn, train: TrainConfig, rule: dict,
                 history: List[dict], log, checkpoint_metrics=None):
        self._estimator, self._eval_input_fn, self._train = estimator, eval_input_fn, train
        self._checkpoint_metrics = checkpoint_metrics
        self._rule, self.history, self._log = rule, history, log
        self.decision: Optional[Decision] = None
        self.phase = _last_phase(history)
        self._since = time.monotonic()

    def _due(self, step: int) -> bool:
        if step <= 0 or any(h["global_step"] == step for h in self.history):
            return False
        return step % self._train.eval_every_steps == 0 or step >= self._train.max_train_steps

    def after_save(self, session, global_step_value):
        step = int(global_step_value)
        if not self._due(step):
            return False
        trained = time.monotonic() - self._since
        self.evaluate(self._estimator.latest_checkpoint(), trained)
        self._since = time.monotonic()
        return self.decision.stop

    def evaluate(self, checkpoint: str, trained: float) -> None:
        """Evaluates one checkpoint, appends it to the history and writes the history."""
        train, metric = self._train, self._rule["metric"]
        t = time.monotonic()
        result = _as_floats(self._estimator.evaluate(
            self._eval_input_fn, steps=train.eval_steps, checkpoint_path=checkpoint))
        # The step the checkpoint is named by, which is what finds its files again. On a
        # cluster the variable saved in it can be ahead of the name: the chief names a save
        # by the step it read, and workers move the step before the variables are written.
        if checkpoint:
            result["global_step"] = step_of(checkpoint)
        if self._checkpoint_metrics is not None:
            result.update(_as_floats(self._checkpoint_metrics(checkpoint)))
        if metric not in result:
            raise ValueError(f"early stopping: the evaluation of {checkpoint} has no {metric!r} "
                             f"(it has {sorted(result)})")
        result["phase"] = self.phase
        self.history.append(result)
        self.redecide()
        top = self.history[self.decision.best_index]
        min_step = self._rule.get("min_steps", 0)
        self._log(f"step {result['global_step']:,}: {metric} {result[metric]:.4f} (best "
                  f"{top[metric]:.4f} at step {top['global_step']:,}; "
                  + (f"no stop and no best before step {min_step:,}"
                     if result["global_step"] < min_step else
                     f"{self.decision.evaluations_since_best}/{train.early_stopping_patience} "
                     f"without a gain")
                  + f") - trained {trained:.1f} s, evaluated {time.monotonic() - t:.1f} s")
        _write(train.model_dir, {"rule": self._rule, "history": self.history, "stopped": None})

    def redecide(self) -> None:
        """The decision over the history recorded so far."""
        self.decision = phase_decision(self.history, self._rule["metric"],
                                       self._train.early_stopping_patience,
                                       self._train.early_stopping_min_delta,
                                       self._rule["higher_is_better"],
                                       self._rule.get("min_steps", 0))


def resume_where_the_run_stopped(model_dir: str, recorded: dict, log) -> None:
    """A finished run's checkpoint state names its best checkpoint, not its last: a run resumed
    from there would drop the evaluations after the best and train that stretch again. So the
    state goes back to the newest kept checkpoint (where the run stopped; on a cluster the
    chief may have saved a little past the evaluator's last evaluation), and the rule picks up
    from the full history: nothing more to train for the same settings, a second phase or a
    raised cap goes on from there."""
    stopped = recorded.get("stopped")
    state = tf.train.get_checkpoint_state(model_dir)
    if not stopped or state is None or not state.all_model_checkpoint_paths:
        return
    newest = step_of(max(state.all_model_checkpoint_paths, key=step_of))
    if newest < stopped["step"]:
        log(f"early stopping: the run stopped at step {stopped['step']:,} but that checkpoint "
            f"is gone; resuming from step {newest:,}")
    if newest != step_of(state.model_checkpoint_path):
        _point_checkpoint_state_at(model_dir, newest)


def rule_for(train: TrainConfig) -> dict:
    """The rule a run is judged by, as recorded in early_stopping.json."""
    metric = train.early_stopping_metric
    rule = {"metric": metric, "higher_is_better": metric != "loss",
            "patience": train.early_stopping_patience,
            "min_delta": train.early_stopping_min_delta, "eval_every_steps":
            train.eval_every_steps, "max_train_steps": train.max_train_steps,
            "eval_split": train.eval_split, "eval_steps": train.eval_steps}
    if train.early_stopping_min_steps:  # absent when 0: records written before it still match
        rule["min_steps"] = train.early_stopping_min_steps
    return rule


def stop_record(history: List[dict], decision: Decision, rule: dict, phase: int) -> dict:
    """The "stopped" entry of early_stopping.json for a history the rule is done with (a stop
    without a gain, or the cap), without its "checkpoint" (see point_state_at_best)."""
    metric, best = rule["metric"], history[decision.best_index]
    if decision.stop:
        reason = STOPPED_NO_IMPROVEMENT
        why = (f"{metric} has not improved on {best[metric]:.4f} (step "
               f"{best['global_step']:,}) by more than {rule['min_delta']:g} in "
               f"{decision.evaluations_since_best} evaluations (patience {rule['patience']})"
               + (f" of phase {phase}" if phase > 1 else ""))
    else:
        reason, why = STOPPED_MAX_STEPS, f"reached max_train_steps={rule['max_train_steps']:,}"
    return {"reason": reason, "step": history[-1]["global_step"],
            "best_step": best["global_step"], "best": best[metric], "explanation": why,
            "phase": phase}


def point_state_at_best(model_dir: str, history: List[dict], rule: dict,
                        best_step: int) -> Optional[str]:
    """Makes the checkpoint state name the best checkpoint (returned; None when it was not
    kept) and deletes the first phases' kept bests that a later phase beat. Call it once no
    training task saves checkpoints any more."""
    restored = _point_checkpoint_state_at(model_dir, best_step)
    _drop_kept_checkpoints(model_dir, history, rule, best_step)
    return restored


def write_record(model_dir: str, rule: dict, history: List[dict],
                 stopped: Optional[dict]) -> None:
    """Writes early_stopping.json (atomically: other tasks read it while it changes)."""
    _write(model_dir, {"rule": rule, "history": history, "stopped": stopped})


def step_of(checkpoint: Optional[str]) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def train_with_early_stopping(estimator: tf.estimator.Estimator,
                              train_input_fn_for_round: Callable[[int], Callable],
                              eval_input_fn: Callable, train: TrainConfig, log=logging.info,
                              checkpoint_metrics: Optional[Callable[[str], dict]] = None,
                              second_phase_input_fn_for_round: Optional[
                                  Callable[[int], Callable]] = None):
    """Trains `estimator` under the early-stopping rule (module docstring).

    Args:
      estimator: the DPSR Estimator (its model_dir may hold a checkpoint to resume from).
      train_input_fn_for_round: the number of evaluations already recorded -> the training
        input_fn (a resumed run gets its own input seed, so it does not replay the first run).
      eval_input_fn: the input_fn of the watched split (train.eval_split).
      train: TrainConfig with train_steps = 0 and max_train_steps resolved; its
        save_checkpoints_steps must divide eval_every_steps (each boundary is a checkpoint).
      log: progress lines.
      checkpoint_metrics: checkpoint path -> {name: value} added to each evaluation (required
        for a metric the Estimator's evaluation lacks, such as "recall@100").
      second_phase_input_fn_for_round: like train_input_fn_for_round, the input of a second
        phase that starts at the first stop (None: the first stop ends training).

    Returns:
      (the best evaluation's metrics, []), like tf.estimator.train_and_evaluate's
      (eval result, export results).
    """
    if not train.stops_early or not train.max_train_steps:
        raise ValueError("train_with_early_stopping needs train_steps=0 and max_train_steps "
                         f"resolved, got {train.train_steps} and {train.max_train_steps}")
    if train.eval_every_steps % train.save_checkpoints_steps:
        raise ValueError(
            f"TrainConfig.save_checkpoints_steps={train.save_checkpoints_steps} must divide "
            f"eval_every_steps={train.eval_every_steps}: early stopping evaluates the "
            "checkpoint saved at each boundary")
    metric, patience = train.early_stopping_metric, train.early_stopping_patience
    if metric in FULL_CORPUS_METRICS and checkpoint_metrics is None:
        raise ValueError(f"TrainConfig.early_stopping_metric={metric!r} is a full-corpus "
                         "metric: pass checkpoint_metrics (dpsr_tf/evaluation/"
                         "checkpoint_recall.evaluator; `dpsr train` does)")
    rule = rule_for(train)
    recorded = load_history(train.model_dir)
    resume_where_the_run_stopped(train.model_dir, recorded, log)
    step = step_of(estimator.latest_checkpoint())
    history = [h for h in recorded.get("history", []) if h["global_step"] <= step]
    check_recorded_metric(train, history)
    log(f"early stopping: evaluate {metric} on the {train.eval_split!r} split every "
        f"{train.eval_every_steps:,} steps, stop after {patience} evaluations without a gain "
        f"> {train.early_stopping_min_delta:g} or at {train.max_train_steps:,} steps"
        + (f", no stop and no best before step {train.early_stopping_min_steps:,}"
           if train.early_stopping_min_steps else "")
        + (f" (resuming at step {step:,} with {len(history)} evaluations)" if step else ""))
    evaluator = BoundaryEvaluator(estimator, eval_input_fn, train, rule, history, log,
                                  checkpoint_metrics)
    if history:
        evaluator.redecide()
    inputs = [train_input_fn_for_round] + ([second_phase_input_fn_for_round]
                                           if second_phase_input_fn_for_round else [])
    while True:
        if evaluator.decision is None or not evaluator.decision.stop:
            if step >= train.max_train_steps:
                if not history:  # a resumed run at the cap without a history evaluates once
                    evaluator.evaluate(estimator.latest_checkpoint(), 0.0)
            else:
                # One session per phase: the listener evaluates each boundary's checkpoint and
                # stops training from inside it.
                estimator.train(inputs[evaluator.phase - 1](len(history)),
                                max_steps=train.max_train_steps, saving_listeners=[evaluator])
        step = step_of(estimator.latest_checkpoint())
        if not (evaluator.decision and evaluator.decision.stop and evaluator.phase < len(inputs)
                and step < train.max_train_steps):
            break
        _keep_out_of_rotation(train.model_dir,
                              history[evaluator.decision.best_index]["global_step"])
        evaluator.phase += 1
        evaluator.decision = None
        log(f"early stopping: {metric} stopped improving at step {step:,}; phase "
            f"{evaluator.phase} goes on from there with its own input until it stops improving "
            f"again (the best of both phases is kept)")
    if not history:
        raise RuntimeError(f"early stopping: training ended at step "
                           f"{estimator.latest_checkpoint()} with no evaluation recorded")
    if evaluator.decision is None:  # a phase that ended without an evaluation of its own
        evaluator.redecide()
    stopped = stop_record(history, evaluator.decision, rule, evaluator.phase)
    best = history[evaluator.decision.best_index]
    restored = point_state_at_best(train.model_dir, history, rule, best["global_step"])
    log(f"stopped at step {stopped['step']:,}: {stopped['explanation']}; "
        + where_the_state_points(restored, stopped))
    write_record(train.model_dir, rule, history,
                 dict(stopped, checkpoint=restored or estimator.latest_checkpoint()))
    return best, []


def where_the_state_points(restored: Optional[str], stopped: dict) -> str:
    """The end of the log's "stopped at" line: which checkpoint export and indexing will read."""
    if restored:
        return f"the checkpoint state names the best, step {stopped['best_step']:,}"
    return (f"the best checkpoint (step {stopped['best_step']:,}) was not kept; the last one "
            f"(step {stopped['step']:,}) stays")
