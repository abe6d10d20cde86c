"""Early stopping on a cluster, task by task without a cluster: the evaluator's choice of
checkpoints, its stop record, the chief's and workers' hook, and the hand-over of the
checkpoint state in both orders. The real cluster is tests/training/test_distributed.py."""
import json
import os

import pytest
import tensorflow as tf

from dpsr_tf.training import cluster_early_stopping as ces
from dpsr_tf.training import early_stopping
from dpsr_tf.training.config import TrainConfig


@pytest.mark.parametrize("step, evaluated, want", [
    (0, [], False),            # the chief's first save, before any training
    (130, [], True),           # the first checkpoint the evaluator sees
    (180, [130], False),       # same stretch of 100 steps as 130
    (205, [130], True),        # the next stretch
    (130, [130], False),       # already evaluated
    (990, [905], False),       # same stretch, below the cap (1,000)
    (1003, [905], True),       # past the cap: the last evaluation
    (1010, [1003], False),     # the chief's last save, after the cap's evaluation
])
def test_which_checkpoints_the_evaluator_evaluates(step, evaluated, want):
    history = [{"global_step": s} for s in evaluated]
    assert ces._due(step, history, every=100, cap=1000) is want


def _train(model_dir, **kw):
    kw = dict(dict(max_train_steps=1000, eval_every_steps=100, save_checkpoints_steps=100,
                   early_stopping_patience=2), **kw)
    return TrainConfig(layout_dir="/unused", model_dir=str(model_dir), **kw)


def _save(model_dir, steps):
    """Checkpoint files (empty) and a checkpoint state naming the last of `steps`, as the
    chief's Saver leaves them."""
    paths = []
    for step in steps:
        path = os.path.join(str(model_dir), f"model.ckpt-{step}")
        for suffix in (".index", ".meta", ".data-00000-of-00001"):
            with open(path + suffix, "w", encoding="utf-8") as f:
                f.write("x")
        paths.append(path)
    tf.compat.v1.train.update_checkpoint_state(str(model_dir), paths[-1],
                                               all_model_checkpoint_paths=paths)
    return paths


class _Estimator:
    """Evaluates to values[step]; records the checkpoints it evaluated."""

    def __init__(self, values):
        self.values, self.evaluated = values, []

    def evaluate(self, input_fn, steps=None, checkpoint_path=None):
        step = int(checkpoint_path.rsplit("-", 1)[1])
        self.evaluated.append(step)
        return {"global_step": step, "top10": self.values[step], "loss": 1.0}


def _state_step(model_dir):
    return int(tf.train.get_checkpoint_state(str(model_dir)).model_checkpoint_path
               .rsplit("-", 1)[1])


def test_the_evaluator_stops_by_the_rule_and_leaves_the_state_to_a_running_chief(tmp_path):
    steps = [130, 180, 205, 311, 402, 530, 640]
    paths = _save(tmp_path, steps)
    est = _Estimator({130: 0.3, 205: 0.5, 311: 0.49, 402: 0.5, 530: 0.9, 640: 0.9})
    best, _ = ces.evaluate_as_it_trains(est, None, _train(tmp_path), checkpoints=paths,
                                        log=lambda _: None)
    assert est.evaluated == [130, 205, 311, 402]          # one per stretch; stops at 402
    assert best["global_step"] == 205
    record = early_stopping.load_history(str(tmp_path))
    assert record["rule"] == early_stopping.rule_for(_train(tmp_path))
    assert record["stopped"]["reason"] == early_stopping.STOPPED_NO_IMPROVEMENT
    assert (record["stopped"]["step"], record["stopped"]["best_step"]) == (402, 205)
    # The chief has not said it is done: the state is its to point.
    assert _state_step(tmp_path) == 640
    # The chief ends (its hook read the stop), saves once more, then points at the best.
    _save(tmp_path, steps + [655])
    assert ces.chief_finished(str(tmp_path), early_stopping.rule_for(_train(tmp_path)),
                              log=lambda _: None).endswith("model.ckpt-205")
    assert _state_step(tmp_path) == 205


class _AheadEstimator(_Estimator):
    """As a cluster's checkpoints read: the global_step variable saved in model.ckpt-N is a
    step or two past N (workers moved it between the chief's read and its save)."""

    def evaluate(self, input_fn, steps=None, checkpoint_path=None):
        return dict(super().evaluate(input_fn, steps, checkpoint_path),
                    global_step=early_stopping.step_of(checkpoint_path) + 1)


def test_the_history_names_checkpoints_by_their_files_so_the_best_is_found(tmp_path):
    """A launch-local run evaluated model.ckpt-401 as step 402 and then could not find the
    best's files ("the best checkpoint (step 402) was not kept"): the state kept naming the
    last save."""
    train = _train(tmp_path, max_train_steps=40000, eval_every_steps=400,
                   save_checkpoints_steps=400, early_stopping_patience=1)
    paths = _save(tmp_path, [0, 401, 801, 1201, 1454])
    est = _AheadEstimator({401: 0.5, 801: 0.5, 1201: 0.5})
    best, _ = ces.evaluate_as_it_trains(est, None, train, checkpoints=paths[:4],
                                        log=lambda _: None)
    assert est.evaluated == [401, 801] and best["global_step"] == 401
    record = early_stopping.load_history(str(tmp_path))
    assert [h["global_step"] for h in record["history"]] == [401, 801]
    assert (record["stopped"]["step"], record["stopped"]["best_step"]) == (801, 401)
    assert ces.chief_finished(str(tmp_path), early_stopping.rule_for(train),
                              log=lambda _: None).endswith("model.ckpt-401")
    assert _state_step(tmp_path) == 401


def _rotate_out(model_dir, step):
    """What the chief's Saver does to a checkpoint past keep_checkpoint_max."""
    for path in tf.io.gfile.glob(os.path.join(str(model_dir), f"model.ckpt-{step}.*")):
        os.remove(path)


def _kept_files(model_dir):
    return sorted(os.listdir(os.path.join(str(model_dir), ces.KEPT_DIR)))


def test_the_best_survives_the_chiefs_rotation_while_the_evaluator_lags(tmp_path):
    """A fresh-clone make test on a loaded machine: the chief saved to step 2,023 while the
    evaluator decided on 801, and its Saver (keep 5) had deleted model.ckpt-401, the best,
    so the state kept naming the last save. The evaluator keeps what it evaluates."""
    train = _train(tmp_path, max_train_steps=40000, eval_every_steps=400,
                   save_checkpoints_steps=400, early_stopping_patience=1)
    paths = _save(tmp_path, [401, 801, 1201, 1601, 2001, 2023])

    class _Lagging(_Estimator):
        def evaluate(self, input_fn, steps=None, checkpoint_path=None):
            if checkpoint_path.endswith("-801"):  # the chief's sixth save, meanwhile
                _rotate_out(tmp_path, 401)
            return super().evaluate(input_fn, steps, checkpoint_path)

    est = _Lagging({401: 0.5, 801: 0.5})
    best, _ = ces.evaluate_as_it_trains(est, None, train, checkpoints=paths[:2],
                                        log=lambda _: None)
    assert best["global_step"] == 401 and est.evaluated == [401, 801]
    # The evaluator scored its own kept files, and keeps the best's alone.
    assert _kept_files(tmp_path) == [f"model.ckpt-401{s}" for s in
                                     (".data-00000-of-00001", ".index", ".meta")]
    assert not os.path.exists(paths[0] + ".index")
    assert ces.chief_finished(str(tmp_path), early_stopping.rule_for(train),
                              log=lambda _: None) == paths[0]
    assert _state_step(tmp_path) == 401
    assert sorted(p for p in os.listdir(str(tmp_path)) if p.startswith("model.ckpt-401")) == (
        [f"model.ckpt-401{s}" for s in (".data-00000-of-00001", ".index", ".meta")])


def test_a_checkpoint_rotated_out_before_it_was_kept_is_skipped(tmp_path):
    paths = _save(tmp_path, [100, 200, 300, 400])
    _rotate_out(tmp_path, 200)
    est = _Estimator({100: 0.5, 300: 0.5, 400: 0.5})
    best, _ = ces.evaluate_as_it_trains(est, None, _train(tmp_path), checkpoints=paths,
                                        log=lambda _: None)
    assert est.evaluated == [100, 300, 400] and best["global_step"] == 100


def test_a_chief_done_before_the_stop_leaves_the_state_to_the_evaluator(tmp_path):
    """The chief reached the cap and found no stop recorded (the evaluator was still at an
    earlier checkpoint): the evaluator, recording the stop, sees the done mark and points."""
    paths = _save(tmp_path, [100, 200, 300, 400, 1000, 1004])
    rule = early_stopping.rule_for(_train(tmp_path))
    assert ces.chief_finished(str(tmp_path), rule, log=lambda _: None) is None
    est = _Estimator({100: 0.5, 200: 0.6, 300: 0.5, 400: 0.5, 1000: 0.5})
    best, _ = ces.evaluate_as_it_trains(est, None, _train(tmp_path), checkpoints=paths,
                                        log=lambda _: None)
    assert est.evaluated == [100, 200, 300, 400] and best["global_step"] == 200
    assert _state_step(tmp_path) == 200


def test_at_the_cap_the_evaluator_records_why_and_points_once_the_chief_is_done(tmp_path):
    paths = _save(tmp_path, [100, 200, 1000])
    est = _Estimator({100: 0.5, 200: 0.6, 1000: 0.7})
    rule = early_stopping.rule_for(_train(tmp_path))
    ces.chief_finished(str(tmp_path), rule, log=lambda _: None)
    best, _ = ces.evaluate_as_it_trains(est, None, _train(tmp_path), checkpoints=paths,
                                        log=lambda _: None)
    record = early_stopping.load_history(str(tmp_path))
    assert best["global_step"] == 1000
    assert record["stopped"]["reason"] == early_stopping.STOPPED_MAX_STEPS
    assert _state_step(tmp_path) == 1000


def test_a_restarted_evaluator_goes_on_from_the_recorded_history(tmp_path):
    paths = _save(tmp_path, [100, 200, 300, 400])
    first = _Estimator({100: 0.5, 200: 0.6})
    ces.evaluate_as_it_trains(first, None, _train(tmp_path), checkpoints=paths[:2],
                              log=lambda _: None)
    again = _Estimator({300: 0.5, 400: 0.5})
    best, _ = ces.evaluate_as_it_trains(again, None, _train(tmp_path), checkpoints=paths,
                                        log=lambda _: None)
    assert again.evaluated == [300, 400] and best["global_step"] == 200
    # A finished record: restarted once more, it evaluates nothing and waits for no checkpoint.
    done = _Estimator({})
    ces.evaluate_as_it_trains(done, None, _train(tmp_path), checkpoints=iter(()),
                              log=lambda _: None)
    assert done.evaluated == []


class _RunContext:
    def __init__(self):
        self.stopped = False

    def request_stop(self):
        self.stopped = True


def test_the_hook_stops_training_on_this_rules_stop_only(tmp_path):
    rule = early_stopping.rule_for(_train(tmp_path))
    other = early_stopping.rule_for(_train(tmp_path, max_train_steps=5000))
    stopped = {"reason": "no_improvement", "step": 400, "best_step": 200, "best": 0.6,
               "explanation": "x", "phase": 1}
    now = [0.0]
    hook = ces.StopWhenRecorded(str(tmp_path), rule, poll_secs=1.0, clock=lambda: now[0])
    context = _RunContext()
    hook.after_run(context, None)                      # no record yet
    early_stopping.write_record(str(tmp_path), other, [], stopped)
    now[0] = 5.0
    hook.after_run(context, None)                      # a stale record of other settings
    assert not context.stopped
    early_stopping.write_record(str(tmp_path), rule, [], None)
    now[0] = 10.0
    hook.after_run(context, None)                      # training goes on
    early_stopping.write_record(str(tmp_path), rule, [], stopped)
    now[0] = 10.5
    hook.after_run(context, None)                      # within poll_secs: not read
    assert not context.stopped and hook.reads == 3
    now[0] = 11.0
    hook.after_run(context, None)
    assert context.stopped and hook.reads == 4


def test_a_half_written_record_is_read_next_time(tmp_path):
    with open(os.path.join(str(tmp_path), early_stopping.EARLY_STOPPING_FILE), "w",
              encoding="utf-8") as f:
        f.write('{"rule": {')
    assert ces.recorded_stop(str(tmp_path), {}) is None


def test_the_chief_start_removes_a_stale_done_mark_and_resumes_where_it_stopped(tmp_path):
    _save(tmp_path, [100, 200, 300, 420])
    rule = early_stopping.rule_for(_train(tmp_path))
    history = [{"global_step": s, "top10": v} for s, v in ((100, .5), (200, .6), (300, .5))]
    early_stopping.write_record(str(tmp_path), rule, history, {
        "reason": "no_improvement", "step": 300, "best_step": 200, "explanation": "x"})
    ces.chief_finished(str(tmp_path), rule, log=lambda _: None)     # the last run's chief
    assert _state_step(tmp_path) == 200
    ces.chief_started(str(tmp_path), early_stopping.load_history(str(tmp_path)),
                      log=lambda _: None)
    assert not os.path.exists(os.path.join(str(tmp_path), ces.CHIEF_DONE_FILE))
    assert _state_step(tmp_path) == 420                # the chief's last save, past the stop
    with open(os.path.join(str(tmp_path), early_stopping.EARLY_STOPPING_FILE),
              encoding="utf-8") as f:
        assert json.load(f)["stopped"]["step"] == 300
