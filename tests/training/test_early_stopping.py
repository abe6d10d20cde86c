"""Early stopping, the default training length: the rule on hand-worked sequences, and a real
tiny training run whose stop step is recomputed from its recorded validation history."""
import dataclasses
import json
import os

import pytest
import tensorflow as tf

from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.training import driver, early_stopping
from dpsr_tf.training.config import TrainConfig


@pytest.mark.parametrize("values, patience, delta, higher, want", [
    # best index moves only on a gain > delta; stop once `patience` evaluations follow it
    ([0.1, 0.2, 0.3], 2, 0.0, True, (False, 2, 0)),
    ([0.1, 0.5, 0.4, 0.45], 2, 0.0, True, (True, 1, 2)),
    ([0.1, 0.5, 0.505, 0.509], 2, 0.01, True, (True, 1, 2)),     # +0.005, +0.009: no gain
    ([0.1, 0.5, 0.505, 0.52], 2, 0.01, True, (False, 3, 0)),     # 0.52 - 0.5 = 0.02 > 0.01
    ([3.0, 2.0, 2.5, 1.0], 2, 0.0, False, (False, 3, 0)),        # loss: lower is better
    ([3.0, 2.0, 2.5, 2.1], 2, 0.0, False, (True, 1, 2)),
    ([0.7], 1, 0.0, True, (False, 0, 0)),
])
def test_decide_hand_worked(values, patience, delta, higher, want):
    d = early_stopping.decide(values, patience, delta, higher)
    assert (d.stop, d.best_index, d.evaluations_since_best) == want


def _history(values, steps=None, phases=None):
    steps = steps or [1000 * (i + 1) for i in range(len(values))]
    return [dict({"top10": v, "global_step": s}, **({"phase": phases[i]} if phases else {}))
            for i, (v, s) in enumerate(zip(values, steps))]


@pytest.mark.parametrize("values, min_step, want", [
    # before min_step (3,000): no stop and no best, even after a peak and two drops
    ([0.9, 0.5, 0.4], 3000, (False, 2, 0)),
    # from 3,000 on the rule judges only the evaluations at or after it: the 0.9 at 1,000
    # is not the best, 0.6 at 3,000 is, and two evaluations without a gain stop the run
    ([0.9, 0.5, 0.6, 0.55, 0.58], 3000, (True, 2, 2)),
    ([0.9, 0.5, 0.6, 0.65, 0.61], 3000, (False, 3, 1)),
    # min_step 0: the plain rule (the peak at 1,000 is the best and stops the run)
    ([0.9, 0.5, 0.6], 0, (True, 0, 2)),
])
def test_no_stop_and_no_best_before_min_steps(values, min_step, want):
    d = early_stopping.phase_decision(_history(values), "top10", 2, 0.001, True, min_step)
    assert (d.stop, d.best_index, d.evaluations_since_best) == want


def test_min_steps_is_recorded_in_the_rule_only_when_set():
    base = dict(layout_dir="L", model_dir="M")
    assert "min_steps" not in early_stopping.rule_for(TrainConfig(**base))
    assert early_stopping.rule_for(
        TrainConfig(early_stopping_min_steps=5000, **base))["min_steps"] == 5000


@pytest.mark.parametrize("encoder, train_steps, metric, eval_steps, want", [
    ("pretrained", 0, "recall@10", None, 8),     # logged only, through the transformer: bounded
    ("pretrained", 0, "recall@100", None, 8),
    ("pretrained", 0, "recall@10", 50, 50),      # the user's --eval_steps wins
    ("pretrained", 0, "top10", None, None),      # the in-batch evaluation decides: whole split
    ("pretrained", 3000, "recall@10", None, None),  # a fixed length: nothing stops on it
    ("separate", 0, "recall@10", None, None),    # the light towers: cheap, whole split
])
def test_a_pretrained_encoders_logged_evaluation_is_bounded(encoder, train_steps, metric,
                                                            eval_steps, want):
    lines = []
    train = TrainConfig(layout_dir="L", model_dir="M", train_steps=train_steps,
                        early_stopping_metric=metric, eval_steps=eval_steps)
    out = early_stopping.bounded_logged_evaluation(train, encoder, lines.append)
    assert out.eval_steps == want
    assert out == dataclasses.replace(train, eval_steps=want)  # nothing else changes
    assert len(lines) == (1 if want != eval_steps else 0)
    if lines:
        assert "8 batches" in lines[0] and "--eval_steps" in lines[0]


def _expected_stop(values, patience, delta):
    """Independent of early_stopping.decide: walk the history as a person would."""
    best, best_at = values[0], 0
    for i, v in enumerate(values):
        if i and v > best + delta:
            best, best_at = v, i
        if i - best_at >= patience:
            return i, best_at
    return None, best_at


def test_tiny_run_stops_where_the_rule_says(tiny_layout, tmp_path):
    model_dir = str(tmp_path / "model")
    cfg = ModelConfig(embedding_dim=16, token_embedding_dim=16, feature_embedding_dim=4,
                      item_hidden_units=(32,), query_hidden_units=(32,),
                      query_projection_dim=16, learning_rate=0.1)
    # A coarse min_delta on a small catalog: Top-10 among 50 random items saturates within a
    # few rounds, so the rule stops well before the 1,000-step cap.
    train = TrainConfig(layout_dir=tiny_layout.layout_dir, model_dir=model_dir, batch_size=32,
                        max_train_steps=1000, eval_every_steps=40, early_stopping_patience=1,
                        early_stopping_min_delta=0.05, eval_random_negatives=50,
                        eval_batch_size=64, log_step_count_steps=1000,
                        save_checkpoints_steps=40, keep_checkpoint_max=2, seed=0,
                        intra_op_threads=1, inter_op_threads=2, shuffle_buffer=1000)
    os.environ.pop("TF_CONFIG", None)
    best, _ = driver.train_and_evaluate(cfg, train)

    record = early_stopping.load_history(model_dir)
    history = record["history"]
    steps = [h["global_step"] for h in history]
    assert steps == list(range(40, 40 * len(history) + 1, 40))     # one evaluation a round
    stop_index, best_index = _expected_stop([h["top10"] for h in history], 1, 0.05)
    assert stop_index is not None, f"never stopped: {[h['top10'] for h in history]}"
    assert stop_index == len(history) - 1                # stopped right at that evaluation
    stopped = record["stopped"]
    assert stopped["reason"] == early_stopping.STOPPED_NO_IMPROVEMENT
    assert stopped["step"] == steps[stop_index] < 1000
    assert stopped["best_step"] == steps[best_index]
    assert best["global_step"] == steps[best_index]
    # Export / index / evaluate read the checkpoint state: it names the best evaluation's.
    assert tf.train.latest_checkpoint(model_dir).endswith(f"model.ckpt-{steps[best_index]}")
    with open(os.path.join(model_dir, model_dir_lib.TRAIN_TIME_FILE), encoding="utf-8") as f:
        assert json.load(f)["checkpoint"].endswith(f"model.ckpt-{steps[best_index]}")


def test_one_input_pipeline_and_session_for_the_whole_run(tiny_layout, tmp_path, monkeypatch):
    """Evaluations run inside one Estimator.train: the training input_fn is called once (no
    graph rebuilt, no checkpoint restored between rounds), so a pseudo-query schedule, which
    counts the steps of one input pipeline, is allowed; the run reaches its cap with one
    evaluation per boundary."""
    made = []
    real = driver.default_input_fns

    def counting(*args, **kwargs):
        train_fn, eval_fn = real(*args, **kwargs)

        def counted_train_fn(*a, **k):
            made.append(1)
            return train_fn(*a, **k)
        return counted_train_fn, eval_fn

    monkeypatch.setattr(driver, "default_input_fns", counting)
    model_dir = str(tmp_path / "m")
    cfg = ModelConfig(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
                      item_hidden_units=(16,), query_hidden_units=(16,),
                      query_projection_dim=8)
    # save_checkpoints_steps=20 does not divide 30: checkpoints follow the boundaries instead.
    train = TrainConfig(layout_dir=tiny_layout.layout_dir, model_dir=model_dir, batch_size=16,
                        max_train_steps=90, eval_every_steps=30, early_stopping_patience=5,
                        eval_random_negatives=20, eval_batch_size=64, eval_steps=1,
                        save_checkpoints_steps=20, log_step_count_steps=1000, seed=0,
                        pseudo_query_ratio=0.5, pseudo_query_final_ratio=0.1,
                        pseudo_query_decay_steps=50, intra_op_threads=1, inter_op_threads=2,
                        shuffle_buffer=100)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(cfg, train)
    record = early_stopping.load_history(model_dir)
    assert [h["global_step"] for h in record["history"]] == [30, 60, 90]
    assert record["stopped"]["reason"] == early_stopping.STOPPED_MAX_STEPS
    assert len(made) == 1


def _brute_force_recall(model_dir, checkpoint, spec, k, split="validation"):
    """Recall@k on `split` written out with numpy: every item scored by max over heads of the
    dot product, the k best by a stable descending sort, hits over each request's relevant
    items."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import eval_set as eval_set_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation.evaluate import request_inputs  # pylint: disable=import-outside-toplevel
    from dpsr_tf.model.embedder import CheckpointEmbedder  # pylint: disable=import-outside-toplevel
    eval_set = eval_set_lib.load_eval_set(spec, split)
    items = layout_lib.load_item_table(spec)
    with CheckpointEmbedder(model_dir, checkpoint) as embedder:
        item_emb = embedder.embed_items(items.token_ids, items.token_splits,
                                        {n: items.feature(n) for n in spec.item_features})
        tok, spl, users, hist = request_inputs(spec, eval_set.query_rows, eval_set.user_rows,
                                               eval_set.history_ends)
        heads = embedder.embed_queries(tok, spl, users, hist, query_rows=eval_set.query_rows)
    scores = np.einsum("qmd,nd->qmn", heads, item_emb).max(axis=1)
    recalls = []
    for i in range(len(eval_set)):
        top = np.argsort(-scores[i], kind="stable")[:k]
        relevant = set(eval_set.relevant_rows[eval_set.relevant_splits[i]:
                                              eval_set.relevant_splits[i + 1]].tolist())
        recalls.append(len(relevant & set(top.tolist())) / len(relevant))
    return float(np.mean(recalls))


def test_full_corpus_recall_as_the_watched_metric(tiny_layout, tmp_path):
    """--early_stopping_metric=recall@10: every evaluation records the full-corpus Recall@10 of
    its checkpoint on the validation split (equal to a numpy brute force over that split's
    requests, not the eval split's), the rule runs on those values, and the checkpoint state
    names the best of them."""
    from dpsr_tf.evaluation import checkpoint_recall  # pylint: disable=import-outside-toplevel
    model_dir = str(tmp_path / "model")
    cfg = ModelConfig(embedding_dim=16, token_embedding_dim=16, feature_embedding_dim=4,
                      item_hidden_units=(32,), query_hidden_units=(32,),
                      query_projection_dim=16, num_heads=2, beta=0.0, learning_rate=0.1)
    train = TrainConfig(layout_dir=tiny_layout.layout_dir, model_dir=model_dir, batch_size=32,
                        max_train_steps=160, eval_every_steps=40, early_stopping_patience=1,
                        early_stopping_metric="recall@10", early_stopping_min_delta=0.02,
                        eval_random_negatives=50, eval_batch_size=64, eval_steps=1,
                        log_step_count_steps=1000, save_checkpoints_steps=40,
                        keep_checkpoint_max=10, seed=0, intra_op_threads=1,
                        inter_op_threads=2, shuffle_buffer=1000)
    os.environ.pop("TF_CONFIG", None)
    with pytest.raises(ValueError, match="recall@10.*checkpoint_metrics"):
        driver.train_and_evaluate(cfg, train)
    calls = []
    recall_of = checkpoint_recall.for_training(train)

    def counted(checkpoint):
        calls.append(checkpoint)
        return recall_of(checkpoint)
    best, _ = driver.train_and_evaluate(cfg, train, checkpoint_metrics=counted)

    history = early_stopping.load_history(model_dir)["history"]
    steps = [h["global_step"] for h in history]
    assert [c.rsplit("-", 1)[1] for c in calls] == [str(s) for s in steps]   # one per round
    values = [h["recall@10"] for h in history]
    for h in history:
        want = _brute_force_recall(model_dir, os.path.join(model_dir,
                                                           f"model.ckpt-{h['global_step']}"),
                                   tiny_layout, 10)
        assert h["recall@10"] == pytest.approx(want, abs=1e-9)
    # The eval split would have recorded other values: the watched one is validation.
    on_eval = [_brute_force_recall(model_dir, os.path.join(model_dir, f"model.ckpt-{s}"),
                                   tiny_layout, 10, split="eval") for s in steps]
    assert on_eval != pytest.approx(values, abs=1e-9)
    assert early_stopping.load_history(model_dir)["rule"]["eval_split"] == "validation"
    stop_index, best_index = _expected_stop(values, 1, 0.02)
    if stop_index is None:
        assert steps[-1] == 160
    else:
        assert stop_index == len(history) - 1
    assert best["global_step"] == steps[best_index]
    assert tf.train.latest_checkpoint(model_dir).endswith(f"model.ckpt-{steps[best_index]}")
    assert checkpoint_recall.for_training(
        TrainConfig(layout_dir="l", model_dir="m", early_stopping_metric="top10")) is None


def test_dpsr_train_wires_the_recall_metric(tiny_layout, tmp_path, dpsr_command, task_env,
                                            tiny_model_flags):
    import subprocess  # pylint: disable=import-outside-toplevel
    model_dir = str(tmp_path / "m")
    proc = subprocess.run(dpsr_command(
        "train", f"--layout_dir={tiny_layout.layout_dir}", f"--model_dir={model_dir}",
        "--max_train_steps=40", "--eval_every_steps=20", "--save_checkpoints_steps=20",
        "--early_stopping_patience=5", "--early_stopping_metric=recall@10", "--eval_steps=1",
        "--seed=0", *tiny_model_flags), env=task_env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = early_stopping.load_history(model_dir)
    assert record["rule"]["metric"] == "recall@10"
    assert [h["global_step"] for h in record["history"]] == [20, 40]
    assert all(0.0 <= h["recall@10"] <= 1.0 for h in record["history"])
    assert proc.stderr.count("full-corpus recall@10 ") == 2
    # Resuming with a metric the recorded evaluations lack is an error naming it, not a crash.
    proc = subprocess.run(dpsr_command(
        "train", f"--layout_dir={tiny_layout.layout_dir}", f"--model_dir={model_dir}",
        "--max_train_steps=60", "--eval_every_steps=20", "--save_checkpoints_steps=20",
        "--early_stopping_metric=recall@100", "--eval_steps=1", "--seed=0",
        *tiny_model_flags), env=task_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "dpsr train: TrainConfig.early_stopping_metric='recall@100': the evaluations " \
           "recorded in" in proc.stderr and "at steps [20, 40] have no" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------
# The second phase (--pseudo_query_plateau_ratio), on a scripted estimator: the rule's decisions
# are counted, not timed, and no model is trained.


@pytest.mark.parametrize("history, want", [
    # phase 2's own evaluations decide the stop; the best is over both phases
    ([(1, 0.1), (1, 0.3), (1, 0.2), (1, 0.2), (2, 0.25)], (False, 1, 0)),
    ([(1, 0.1), (1, 0.3), (1, 0.2), (1, 0.2), (2, 0.25), (2, 0.2), (2, 0.2)], (True, 1, 2)),
    ([(1, 0.1), (1, 0.3), (1, 0.2), (1, 0.2), (2, 0.25), (2, 0.4), (2, 0.3)], (False, 5, 1)),
    ([(1, 0.1), (1, 0.3), (1, 0.2)], (False, 1, 1)),   # no phase field: phase 1
])
def test_phase_decision_hand_worked(history, want):
    records = [{"phase": p, "top10": v} for p, v in history]
    if len(history) == 3:
        records = [{"top10": v} for _, v in history]
    d = early_stopping.phase_decision(records, "top10", 2, 0.0)
    assert (d.stop, d.best_index, d.evaluations_since_best) == want


class _ScriptedEstimator:
    """Trains by moving its step to each save boundary and evaluates to the next value of the
    curve of the input it trains on ("phase1" or "phase2"), in order."""

    def __init__(self, model_dir, curves, every):
        self.model_dir, self._curves, self._every = model_dir, curves, every
        self.step, self.inputs, self._input = 0, [], None

    def latest_checkpoint(self):
        return os.path.join(self.model_dir, f"model.ckpt-{self.step}") if self.step else None

    def train(self, input_fn, max_steps, saving_listeners):
        self.inputs.append(input_fn)
        self._input = input_fn.split("-")[0]
        while self.step < max_steps:
            self.step += self._every
            if saving_listeners[0].after_save(None, self.step):
                return

    def evaluate(self, input_fn, steps=None, checkpoint_path=None):
        value = self._curves[self._input].pop(0)
        return {"global_step": int(checkpoint_path.rsplit("-", 1)[1]), "top10": value}


def _scripted_run(tmp_path, curves, second=True, max_steps=2000):
    os.makedirs(tmp_path, exist_ok=True)
    train = TrainConfig(layout_dir="/unused", model_dir=str(tmp_path), max_train_steps=max_steps,
                        eval_every_steps=100, save_checkpoints_steps=100,
                        early_stopping_patience=2)
    est = _ScriptedEstimator(str(tmp_path), {k: list(v) for k, v in curves.items()}, 100)
    best, _ = early_stopping.train_with_early_stopping(
        est, lambda r: f"phase1-r{r}", None, train, log=lambda _: None,
        second_phase_input_fn_for_round=(lambda r: f"phase2-r{r}") if second else None)
    return est, best, early_stopping.load_history(str(tmp_path))


def test_the_second_phase_starts_at_the_first_stop_and_keeps_the_best_of_both(tmp_path):
    est, best, record = _scripted_run(tmp_path / "a", {
        "phase1": [0.1, 0.3, 0.29, 0.28], "phase2": [0.25, 0.35, 0.4, 0.39, 0.38]})
    assert est.inputs == ["phase1-r0", "phase2-r4"]  # the new phase's input seed: round 4
    assert [(h["global_step"], h["phase"]) for h in record["history"]] == \
        [(100, 1), (200, 1), (300, 1), (400, 1), (500, 2), (600, 2), (700, 2), (800, 2),
         (900, 2)]
    assert best["global_step"] == 700 and record["stopped"]["best_step"] == 700
    assert record["stopped"]["reason"] == early_stopping.STOPPED_NO_IMPROVEMENT
    assert record["stopped"]["phase"] == 2 and "of phase 2" in record["stopped"]["explanation"]


def test_a_second_phase_that_never_beats_the_first_keeps_the_first_best(tmp_path):
    _, best, record = _scripted_run(tmp_path / "b", {
        "phase1": [0.1, 0.3, 0.29, 0.28], "phase2": [0.2, 0.21, 0.2, 0.2]})
    assert best["global_step"] == 200
    assert [h["phase"] for h in record["history"]] == [1] * 4 + [2] * 4


def test_without_a_second_phase_the_first_stop_ends_training(tmp_path):
    est, best, record = _scripted_run(tmp_path / "c", {
        "phase1": [0.1, 0.3, 0.29, 0.28], "phase2": []}, second=False)
    assert est.inputs == ["phase1-r0"] and best["global_step"] == 200
    assert record["stopped"]["step"] == 400 and record["stopped"]["phase"] == 1


def test_a_run_resumed_after_the_first_stop_goes_on_with_the_second_phase(tmp_path):
    # Interrupted right after phase 1 stopped: the history holds phase 1 only.
    _scripted_run(tmp_path / "d", {"phase1": [0.1, 0.3, 0.29, 0.28], "phase2": []},
                  second=False)
    train = TrainConfig(layout_dir="/unused", model_dir=str(tmp_path / "d"),
                        max_train_steps=2000, eval_every_steps=100, save_checkpoints_steps=100,
                        early_stopping_patience=2)
    est = _ScriptedEstimator(str(tmp_path / "d"), {"phase2": [0.5, 0.4, 0.4]}, 100)
    est.step = 400
    best, _ = early_stopping.train_with_early_stopping(
        est, lambda r: f"phase1-r{r}", None, train, log=lambda _: None,
        second_phase_input_fn_for_round=lambda r: f"phase2-r{r}")
    assert est.inputs == ["phase2-r4"] and best["global_step"] == 500


def test_the_second_phase_only_where_the_share_is_above_the_plateau():
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
    spec = SimpleNamespace(record_files={"train": [], "eval": [], "pseudo": []},
                           num_records={"train": 1000})
    no_pseudo = SimpleNamespace(record_files={"train": [], "eval": []},
                                num_records={"train": 1000})
    cfg = ModelConfig()

    def phase2(spec, **kw):
        train = TrainConfig(layout_dir="/l", model_dir="/m", **kw)
        return driver.plateau_phase_input_fn(cfg, train, None, spec)

    assert phase2(spec, pseudo_query_ratio=0.9, pseudo_query_plateau_ratio=0.5) is not None
    assert phase2(spec, pseudo_query_ratio=0.5, pseudo_query_plateau_ratio=0.5) is None
    assert phase2(spec, pseudo_query_ratio=0.9) is None                      # off (default)
    assert phase2(no_pseudo, pseudo_query_ratio=0.9, pseudo_query_plateau_ratio=0.5) is None
    assert phase2(spec, pseudo_query_ratio=0.9, pseudo_query_final_ratio=0.4,
                  pseudo_query_decay_steps=100, pseudo_query_plateau_ratio=0.5) is None


def _real_run_with_scripted_values(layout_dir, model_dir, monkeypatch, curve, plateau=0.5,
                                   evaluated=None):
    """driver.train_and_evaluate with real training and the real Saver (keep_checkpoint_max 4,
    a checkpoint every 10 steps, patience 2, a second phase at the plateau unless `plateau` is
    -1), whose evaluations return curve[step] as top10 (and append step to `evaluated`)."""
    real_make = driver.make_estimator

    def scripted(*args, **kwargs):
        est = real_make(*args, **kwargs)

        def evaluate(input_fn, steps=None, checkpoint_path=None, **_):
            step = int(checkpoint_path.rsplit("-", 1)[1])
            if evaluated is not None:
                evaluated.append(step)
            return {"global_step": step, "top10": curve[step], "loss": 1.0}
        est.evaluate = evaluate
        return est

    monkeypatch.setattr(driver, "make_estimator", scripted)
    cfg = ModelConfig(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
                      item_hidden_units=(16,), query_hidden_units=(16,),
                      query_projection_dim=8)
    train = TrainConfig(layout_dir=layout_dir, model_dir=model_dir, batch_size=16,
                        max_train_steps=200, eval_every_steps=10, save_checkpoints_steps=10,
                        early_stopping_patience=2, keep_checkpoint_max=4,
                        log_step_count_steps=1000, seed=0, pseudo_query_ratio=0.9,
                        pseudo_query_plateau_ratio=plateau, intra_op_threads=1,
                        inter_op_threads=2, shuffle_buffer=100)
    os.environ.pop("TF_CONFIG", None)
    best, _ = driver.train_and_evaluate(cfg, train)
    return best, early_stopping.load_history(model_dir)


def test_the_first_phases_best_checkpoint_survives_a_long_second_phase(tiny_layout, tmp_path,
                                                                      monkeypatch):
    """The first phase's best (step 20) is 7 checkpoints old when the second phase stops:
    without keeping it out of the Saver's rotation it was deleted (Best Buy: "the best
    checkpoint (step 7,000) was not kept")."""
    model_dir = str(tmp_path / "m")
    best, record = _real_run_with_scripted_values(
        tiny_layout.layout_dir, model_dir, monkeypatch,
        {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.8,                   # phase 1 stops at 40
         50: 0.1, 60: 0.2, 70: 0.3, 80: 0.3, 90: 0.3})         # phase 2 stops at 90
    assert [(h["global_step"], h["phase"]) for h in record["history"]] == \
        [(s, 1 if s <= 40 else 2) for s in range(10, 100, 10)]
    assert best["global_step"] == 20 and record["stopped"]["step"] == 90
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-20")
    kept = sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                  for p in tf.io.gfile.glob(os.path.join(model_dir, "model.ckpt-*.index")))
    assert kept == [20, 60, 70, 80, 90]   # the best, and the Saver's last 4


def test_a_kept_best_that_a_later_phase_beats_is_deleted(tiny_layout, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "m")
    best, _ = _real_run_with_scripted_values(
        tiny_layout.layout_dir, model_dir, monkeypatch,
        {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.8, 50: 0.95, 60: 0.97, 70: 0.96, 80: 0.96})
    assert best["global_step"] == 60
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-60")
    assert not tf.io.gfile.glob(os.path.join(model_dir, "model.ckpt-20.*"))


def _checkpoint_steps(model_dir):
    return sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                  for p in tf.io.gfile.glob(os.path.join(model_dir, "model.ckpt-*.index")))


def test_a_finished_run_resumed_with_a_second_phase_starts_it_where_the_run_stopped(
        tiny_layout, tmp_path, monkeypatch):
    """The finished run's state names its best (20): resuming from there evaluated 30 and 40
    again as phase 1 instead of starting phase 2 at 40."""
    model_dir = str(tmp_path / "m")
    curve = {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.8, 50: 0.1, 60: 0.95, 70: 0.9, 80: 0.9}
    _, first = _real_run_with_scripted_values(tiny_layout.layout_dir, model_dir, monkeypatch,
                                              curve, plateau=-1)
    assert first["stopped"]["step"] == 40 and first["stopped"]["best_step"] == 20
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-20")
    evaluated = []
    best, record = _real_run_with_scripted_values(tiny_layout.layout_dir, model_dir,
                                                  monkeypatch, curve, evaluated=evaluated)
    assert evaluated == [50, 60, 70, 80]
    assert [(h["global_step"], h["phase"]) for h in record["history"]] == \
        [(10, 1), (20, 1), (30, 1), (40, 1), (50, 2), (60, 2), (70, 2), (80, 2)]
    assert best["global_step"] == 60 and record["stopped"]["phase"] == 2
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-60")


def test_a_finished_run_resumed_with_its_own_settings_trains_nothing_more(
        tiny_layout, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "m")
    curve = {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.8, 50: 0.99, 60: 0.99}
    _, first = _real_run_with_scripted_values(tiny_layout.layout_dir, model_dir, monkeypatch,
                                              curve, plateau=-1)
    kept = _checkpoint_steps(model_dir)
    evaluated = []
    best, again = _real_run_with_scripted_values(tiny_layout.layout_dir, model_dir,
                                                 monkeypatch, curve, plateau=-1,
                                                 evaluated=evaluated)
    assert evaluated == []
    assert best["global_step"] == 20 and again["history"] == first["history"]
    assert _checkpoint_steps(model_dir) == kept and max(kept) == 40   # no step 50 trained
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-20")
