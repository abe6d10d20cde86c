"""Cross-validation over query-hash folds, without rewriting the data (`dpsr crossval`).

Fold F of N holds out the queries whose int(md5(query)) % N == F (split.SplitConfig.fold), so
the N folds partition the distinct queries and each fold's eval queries are unseen in its
training. For every fold the driver runs, in this process:

  prepare   -> <output>/fold_F/layout     (the template PrepareConfig with fold F of N)
  train     -> <output>/fold_F/model      (driver.train_and_evaluate, the same configs each fold)
  evaluate  -> <output>/fold_F/metrics.json (evaluate_model, and evaluate_bm25 with bm25=True;
               with zero_shot=True the untrained encoder and its hybrid, evaluation/zero_shot.py)

then writes <output>/summary.json: per system and metric the fold values, their mean and their
sample standard deviation (ddof=1), and (with BM25) a paired comparison of the systems over
every held-out request of every fold (crossval_summary.py). <output>/crossval_config.json records
the configs; a run into the same directory with the same configs reuses the folds that have a
metrics.json (an interrupted run resumes) and redoes the others from scratch.
"""
import dataclasses
import json
import os
import shutil
import time
from typing import Callable, List, Optional, Tuple

import numpy as np

from dpsr_tf import config_json
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib
from dpsr_tf.evaluation import checkpoint_recall
from dpsr_tf.evaluation import crossval_hybrid as hybrid_lib
from dpsr_tf.evaluation.crossval_summary import (PER_QUERY, TABLE_METRICS, format_table,
                                                 pooled_comparisons, summarize_folds)
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.evaluation import per_query as per_query_lib
from dpsr_tf.evaluation import zero_shot as zero_shot_lib
from dpsr_tf.model import distill_cache
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.training import checkpoint_pruning, driver
from dpsr_tf.training.config import TrainConfig

CONFIG_JSON = "crossval_config.json"
SUMMARY_JSON = "summary.json"
METRICS_JSON = "metrics.json"
HYBRID_JSON = "hybrid.json"
# In a fold's metrics.json: whether its hybrid stage scored the queries spelled, and the
# choice's record (crossval_hybrid.evaluate_fold: the --spelling mode, its scores). Rerunning
# with another --spelling redoes the stage rather than reusing lists of the other setting.
HYBRID_SPELLING = "hybrid_spelling"
HYBRID_SPELLING_CHOICE = "hybrid_spelling_choice"
# The baselines a user would try first (zero_shot.py), scored per fold with --zero_shot.
ZERO_SHOT_SYSTEMS = ("zero_shot", "zero_shot_hybrid")


@dataclasses.dataclass(frozen=True)
class CrossvalConfig:
    """Settings of one cross-validation.

    Attributes:
      output: directory of the run (fold_F/{layout,model,metrics.json}, summary.json).
      folds: N >= 2; fold F evaluates on the queries with md5 % N == F.
      prepare: template of every fold's prepare: its `output` and the split's modulus / fold
        are set per fold (the split method must be query_hash); everything else
        (max_train_queries, seed, tokenizer, ...) applies to every fold.
      model: the model of every fold.
      train: template of every fold's training: layout_dir and model_dir are set per fold.
      evaluation: how each fold is evaluated (split "eval": the fold's held-out queries).
      bm25: also evaluate BM25 on each fold.
      hybrid: also build each fold's index as `dpsr index` does and evaluate the served dense
        ranking, the build's lexical (BM25) index and their fusion, with the fusion (and dense
        feedback) of fold F chosen on its validation split, carved from its training queries,
        as `dpsr export` chooses them (evaluation/crossval_hybrid.py). Not part
        of the recorded settings (to_dict): adding it to a finished run adds the hybrid stage to
        its folds and reuses their models.
      zero_shot: also evaluate, on each fold's held-out requests, the pretrained encoder used
        as it ships (model.pretrained_dir; "" = all-MiniLM-L6-v2) over the titles and its
        reciprocal-rank fusion with BM25 over every field (evaluation/zero_shot.py), with
        paired tests against the other systems. Like `hybrid`, not a recorded setting.
      spelling: whether the hybrid stage corrects the queries with each fold's catalog
        speller (dpsr_tf/tokenization/speller.py), as a spelling servable does: "auto" chooses
        it per fold on its validation split as `dpsr export --spelling=auto` does
        (crossval_hybrid.choose_spelling); "on" / "off" set it for every fold.
      fusion_objective: the metrics whose mean chooses each fold's fusion (as `dpsr export
        --fusion_objective`); its Recall@N cut-offs must be among evaluation.recall_ks.
      dense_feedback: each fold's choice is among the fusions without and with dense feedback
        (as `dpsr export --dense_feedback=auto`, the default); False: without only.
      prune_checkpoints: once a fold is evaluated (and its hybrid stage done), delete every
        checkpoint of its model but the one evaluated (training/checkpoint_pruning.py): the
        numbers, a rerun and `dpsr index` / `export` of the fold need only that one.
    """

    output: str
    prepare: prepare_lib.PrepareConfig
    model: ModelConfig
    train: TrainConfig
    folds: int = 5
    evaluation: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig()
    bm25: bool = False
    hybrid: bool = False
    zero_shot: bool = False
    spelling: str = "auto"
    fusion_objective: Tuple[str, ...] = fusion_choice.OBJECTIVE
    dense_feedback: bool = True
    prune_checkpoints: bool = True

    def __post_init__(self):
        object.__setattr__(self, "fusion_objective",
                           fusion_choice.parse_objective(self.fusion_objective))
        missing = [m for m in self.fusion_objective if m.startswith("recall@")
                   and int(m.split("@")[1]) not in self.evaluation.recall_ks]
        if missing:
            raise ValueError(f"fusion objective {missing}: the evaluation measures recall at "
                             f"{list(self.evaluation.recall_ks)} only")
        if self.spelling not in hybrid_lib.SPELLING_MODES:
            raise ValueError(f"spelling={self.spelling!r}: must be one of "
                             f"{list(hybrid_lib.SPELLING_MODES)}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 (fold F of N holds out md5(query) % N == F), "
                             f"got {self.folds}")
        if self.prepare.split.method != split_lib.QUERY_HASH:
            raise ValueError(f"cross-validation folds are query-hash residues; the prepare "
                             f"split method must be {split_lib.QUERY_HASH!r}, got "
                             f"{self.prepare.split.method!r}")
        if self.evaluation.split != "eval":
            raise ValueError(f"cross-validation evaluates each fold's held-out queries (split "
                             f"'eval'), got evaluation split {self.evaluation.split!r}")
        if self.train.hard_negatives_from:
            raise ValueError(f"--hard_negatives_from={self.train.hard_negatives_from}: hard "
                             f"negatives are mined from a model of the same layout, and every "
                             f"fold has its own; dpsr crossval does not mine them (train each "
                             f"fold with `dpsr train --hard_negatives_from` instead)")

        if self.train.teacher_dir:
            _check_teacher_template(self.train.teacher_dir, self.folds)

    def fold_dir(self, fold: int) -> str:
        return os.path.join(self.output, f"fold_{fold}")

    def fold_prepare(self, fold: int) -> prepare_lib.PrepareConfig:
        """The PrepareConfig of fold `fold` (writes <output>/fold_F/layout)."""
        split = dataclasses.replace(self.prepare.split, modulus=self.folds, fold=fold)
        return dataclasses.replace(self.prepare, split=split,
                                   output=os.path.join(self.fold_dir(fold), "layout"))

    def fold_train(self, fold: int) -> TrainConfig:
        """The TrainConfig of fold `fold` (its layout, <output>/fold_F/model; a teacher_dir's
        "{fold}" becomes F: each fold distills from the teacher trained on its own folds)."""
        return dataclasses.replace(self.train,
                                   layout_dir=os.path.join(self.fold_dir(fold), "layout"),
                                   model_dir=os.path.join(self.fold_dir(fold), "model"),
                                   teacher_dir=fold_teacher_dir(self.train.teacher_dir, fold))

    def to_dict(self) -> dict:
        """JSON-ready dict (the per-fold paths are left out: they follow from `output`)."""
        data = config_json.to_dict(self)
        data["prepare"].pop("output")
        data["prepare"]["split"].pop("fold")
        data["train"].pop("layout_dir")
        data["train"].pop("model_dir")
        data.pop("hybrid")      # an evaluation stage on top of the same folds
        data.pop("spelling")
        data.pop("zero_shot")   # baselines scored on the same folds
        data.pop("fusion_objective")  # chosen again from the folds' lists on every run
        data.pop("dense_feedback")
        data.pop("prune_checkpoints")   # disk use, not the measurement
        # `dpsr evaluate --tie_aware`'s switch: crossval's tie-aware rows do not read it, and
        # runs recorded before it existed resume.
        data["evaluation"].pop("tie_aware")
        data["output"] = os.path.abspath(self.output)
        return data


FOLD_FIELD = "{fold}"


def fold_teacher_dir(teacher_dir: str, fold: int) -> str:
    """teacher_dir with "{fold}" replaced by the fold's number ("" stays "")."""
    return teacher_dir.replace(FOLD_FIELD, str(fold))


def _check_teacher_template(teacher_dir: str, folds: int) -> None:
    """A trained teacher model fits one layout, so every fold needs its own: the path must name
    the fold. A pretrained encoder directory (used as it ships) serves every fold."""
    if FOLD_FIELD in teacher_dir:
        missing = [f for f in range(folds) if not os.path.isdir(fold_teacher_dir(teacher_dir, f))]
        if missing:
            raise ValueError(f"--teacher_dir={teacher_dir}: no teacher for folds {missing} "
                             f"(e.g. {fold_teacher_dir(teacher_dir, missing[0])}); run the "
                             f"teacher's crossval first (`dpsr crossval --output=T "
                             f"--text_encoder=pretrained ...`, then --teacher_dir=T/fold_"
                             f"{FOLD_FIELD}/model)")
        return
    if distill_cache.teacher_kind(teacher_dir) == "model":
        raise ValueError(f"--teacher_dir={teacher_dir} is a trained model, which fits the "
                         f"layout it was trained on; every fold has its own, so name the fold "
                         f"in the path: --teacher_dir=T/fold_{FOLD_FIELD}/model with T the "
                         f"teacher's crossval output (a pretrained encoder directory needs no "
                         f"{FOLD_FIELD})")


def run(config: CrossvalConfig, log: Callable[[str], None] = print,
        paired_samples: int = 10000) -> dict:
    """Runs every fold (prepare, train, evaluate) and writes the per-fold and summary JSON.

    Args:
      paired_samples: bootstrap resamples and random sign flips of each pooled paired test
        (paired.paired_test's num_samples; the smallest p it can report is about 1 / this).
        Not a recorded setting (summary.json notes it); its cost grows with it
        (docs/evaluation.md, "Cross-validation: `dpsr crossval`").

    Returns:
      The summary dict written to <output>/summary.json: "folds", "rule", per-fold
      "fold_metrics" paths, "systems" (summarize_folds) and "seconds".

    Raises:
      ValueError: TF_CONFIG is set (folds train in this process, not on a cluster), or
        <output> holds something else (another run's configs, or not a cross-validation).
      SchemaError / PrepareError: from prepare (bad input files).
    """
    if os.environ.get("TF_CONFIG"):
        raise ValueError("TF_CONFIG is set, but dpsr crossval trains every fold in this "
                         "process; unset TF_CONFIG (cluster training: run dpsr prepare "
                         "--split_fold=F and dpsr train per fold)")
    start = time.monotonic()
    output = os.path.abspath(config.output)
    _claim_output(output, config.to_dict())
    fold_metrics = []
    for fold in range(config.folds):
        fold_metrics.append(_run_fold(config, fold, log))
    names = ("dpsr", "bm25")
    hybrid, tie_aware = None, []
    if config.hybrid:
        hybrid, tie_aware = _hybrid_summary(config, fold_metrics, log)
        names = ("dpsr", hybrid_lib.SERVED, hybrid_lib.LEXICAL, "bm25", hybrid_lib.HYBRID)
    if config.zero_shot:
        names += ZERO_SHOT_SYSTEMS
    systems = summarize_folds([{k: m[k] for k in names if k in m} for m in fold_metrics])
    pairs = _pairs(config)
    # Only the systems of this run are compared, even in folds a run with more extended.
    paired = pooled_comparisons([dict(m, **{PER_QUERY: {k: v for k, v in m[PER_QUERY].items()
                                                        if k in names}})
                                 if PER_QUERY in m else m for m in fold_metrics],
                                seed=config.evaluation.seed, pairs=pairs,
                                num_samples=paired_samples)
    summary = {
        "folds": config.folds,
        "rule": f"fold F: eval iff int(md5(query.encode('utf-8')).hexdigest(), 16) % "
                f"{config.folds} == F",
        "max_train_queries": config.prepare.max_train_queries,
        "fold_metrics": [os.path.join(f"fold_{f}", METRICS_JSON) for f in range(config.folds)],
        "std": "sample standard deviation over folds (ddof=1)",
        "systems": systems,
        "paired": [c.to_json() for c in paired],
        "paired_samples": paired_samples,
    }
    tie_paired = []
    if hybrid is not None:
        tie_paired = pooled_comparisons(tie_aware,
                                        seed=config.evaluation.seed,
                                        pairs=list(hybrid_lib.TIE_AWARE_PAIRS),
                                        num_samples=paired_samples)
        hybrid["tie_aware_paired"] = [c.to_json() for c in tie_paired]
        summary["hybrid"] = hybrid
    summary["seconds"] = round(time.monotonic() - start, 1)
    _write_json(os.path.join(output, SUMMARY_JSON), summary)
    extra = ""
    if hybrid is not None:
        extra = "".join(f"\n  fold {f}: fusion {c} (chosen on {on}), queries "
                        f"{'spelled' if sp else 'as typed'} (--spelling={hybrid['spelling_mode']})"
                        f"; on its own held-out requests it would choose {s}"
                        for f, (c, on, sp, s) in enumerate(zip(hybrid["fusion_names"],
                                                               hybrid["chosen_on"],
                                                               hybrid["spelling"],
                                                               hybrid["self_chosen_names"])))
        extra += (f"\n{hybrid_lib.SELF_CHOSEN} (optimistic: each fold's fusion chosen on its own "
                  f"held-out requests):\n" + format_table(hybrid["self_chosen_systems"]))
        extra += ("\ntie-aware (expected over the orders of tied scores, "
                  "evaluation/tie_metrics.py):\n" + format_table(hybrid["tie_aware_systems"])
                  + "".join(f"\n  {c.line()}" for c in tie_paired))
    log(f"crossval: {config.folds} folds in {summary['seconds']:.0f} s; mean ± std over folds "
        f"(ddof=1):\n{format_table(systems)}"
        + "".join(f"\n  {c.line()}" for c in paired) + extra
        + f"\nwrote {os.path.join(output, SUMMARY_JSON)}")
    return summary


def _pairs(config: CrossvalConfig) -> Optional[List[Tuple[str, str]]]:
    """The pooled paired comparisons (a, b), a - b reported; None: every pair of systems."""
    if not config.hybrid:
        return None
    pairs = hybrid_lib.pairs(config.bm25)
    if config.zero_shot:
        zero_shot, zero_shot_hybrid = ZERO_SHOT_SYSTEMS
        pairs += [(hybrid_lib.HYBRID, zero_shot_hybrid), (hybrid_lib.HYBRID, zero_shot),
                  (hybrid_lib.SERVED, zero_shot), ("dpsr", zero_shot),
                  (zero_shot_hybrid, zero_shot)]
    return pairs


def _hybrid_summary(config: CrossvalConfig, fold_metrics: List[dict],
                    log: Callable[[str], None]) -> Tuple[dict, List[dict]]:
    """Chooses each fold's fusion on its validation split (crossval_hybrid.summarize), writes
    fold_F/HYBRID_JSON, and adds
    each fold's "hybrid" metrics and per-request values to its in-memory metrics.

    Returns:
      (the summary's "hybrid" section, per fold the tie-aware {system: {metric: mean}} with
       PER_QUERY {system: {metric: [Q]}} for the pooled paired tests).
    """
    fold_dirs = [config.fold_dir(f) for f in range(config.folds)]
    per_fold = hybrid_lib.summarize(fold_dirs, config.evaluation.recall_ks,
                                    objective=config.fusion_objective, log=log,
                                    feedback=config.dense_feedback)
    tie_aware = []
    for fold, (metrics, result) in enumerate(zip(fold_metrics, per_fold)):
        _write_json(os.path.join(fold_dirs[fold], HYBRID_JSON), result)
        metrics[hybrid_lib.HYBRID] = result[hybrid_lib.HYBRID]
        metrics[PER_QUERY][hybrid_lib.HYBRID] = result["per_query"][hybrid_lib.HYBRID]
        log(f"crossval --hybrid: scoring fold {fold}'s lists in expectation over tied orders"
            + (" (and bm25 over the whole catalog)" if "bm25" in metrics else ""))
        per_request = hybrid_lib.tie_aware_fold(
            fold_dirs[fold], FusionConfig.from_json(result["fusion"]),
            FeedbackConfig.from_json(result["dense_feedback"]), config.evaluation.recall_ks,
            layout_lib.load_layout_spec(metrics["layout_dir"]).num_items)
        if "bm25" in metrics:   # bm25s ranks the whole catalog: its ties are scored whole
            per_request["bm25"] = hybrid_lib.cached_tie_aware_bm25(
                fold_dirs[fold], metrics["layout_dir"], config.evaluation)
        tie_aware.append({**{system: {m: float(v.mean()) for m, v in values.items()}
                             for system, values in per_request.items()},
                          PER_QUERY: per_request})
    return {
        "fusion_rule": "fold F's fusion is the best of fusion_choice.CANDIDATES"
                       + (" without and with dense feedback" if config.dense_feedback else "")
                       + f" by the mean of {list(per_fold[0]['objective'])} over the "
                       "requests of fold F's validation split (carved from its training "
                       "queries), as dpsr export chooses",
        "fold_files": [os.path.join(f"fold_{f}", HYBRID_JSON) for f in range(config.folds)],
        "fusions": [r["fusion"] for r in per_fold],
        "dense_feedback": [r["dense_feedback"] for r in per_fold],
        "fusion_names": [r["fusion_name"] for r in per_fold],
        "chosen_on": [r["chosen_on"] for r in per_fold],
        "spelling_mode": config.spelling,
        "spelling": [bool(m.get(HYBRID_SPELLING)) for m in fold_metrics],
        "self_chosen_note": "optimistic: each fold's fusion chosen on its own held-out requests",
        "self_chosen_names": [r["self_chosen"]["fusion_name"] for r in per_fold],
        "self_chosen_systems": summarize_folds(
            [{hybrid_lib.SELF_CHOSEN: r["self_chosen"][hybrid_lib.SELF_CHOSEN]}
             for r in per_fold]),
        "tie_aware_note": "dpsr_served, lexical, hybrid (and bm25) scored in expectation over "
                          "the orders of tied scores (evaluation/tie_metrics.py)",
        "tie_aware_systems": summarize_folds(
            [{k: v for k, v in t.items() if k != PER_QUERY} for t in tie_aware]),
    }, tie_aware


def _run_fold(config: CrossvalConfig, fold: int, log: Callable[[str], None]) -> dict:
    tag = f"crossval fold {fold + 1}/{config.folds} (md5 % {config.folds} == {fold})"
    fold_dir = config.fold_dir(fold)
    metrics_path = os.path.join(fold_dir, METRICS_JSON)
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        log(f"{tag}: done earlier, reusing {metrics_path}")
        if config.zero_shot and not all(s in metrics for s in ZERO_SHOT_SYSTEMS):
            _zero_shot_stage(config, metrics, tag, log)
            _write_json(metrics_path, metrics)
        if config.hybrid and not _has_hybrid_stage(fold_dir, metrics, config.spelling,
                                                   config.dense_feedback):
            made_with = _spelling_mode(metrics)
            if made_with is not None and made_with != config.spelling:
                log(f"{tag}: its hybrid stage was made with --spelling={made_with}; redoing it "
                    f"with --spelling={config.spelling}")
            elif made_with is not None:
                log(f"{tag}: its hybrid stage predates the dense feedback or validation lists; "
                    f"redoing it")
            _hybrid_stage(config, fold, metrics, tag, log)
            _write_json(metrics_path, metrics)
        _prune_checkpoints(config, metrics, tag, log)
        return metrics
    os.makedirs(fold_dir, exist_ok=True)

    t = time.monotonic()
    prepare_config = config.fold_prepare(fold)
    warnings = []

    def prepare_line(line: str) -> None:
        prepare_log.write(line + "\n")
        if line.startswith("warning:"):     # a small validation split, or none
            warnings.append(line)
    with open(os.path.join(fold_dir, "prepare.log"), "w", encoding="utf-8") as prepare_log:
        spec = prepare_lib.prepare(prepare_config, log=prepare_line)
    for line in warnings:
        log(f"{tag}: prepare {line}")
    splits = spec.counts["splits"]
    validation = splits.get(layout_lib.VALIDATION_SPLIT)
    log(f"{tag}: prepared {prepare_config.output} in {time.monotonic() - t:.1f} s: train "
        f"{splits['train']['interactions']:,} interactions / {splits['train']['queries']:,} "
        f"queries, eval {splits['eval']['interactions']:,} / {splits['eval']['queries']:,}"
        + (f", validation (early stopping) {validation['interactions']:,} / "
           f"{validation['queries']:,}" if validation else ", no validation split"))

    t = time.monotonic()
    train_config = config.fold_train(fold)
    if os.path.exists(train_config.model_dir):    # an interrupted run: train from scratch
        shutil.rmtree(train_config.model_dir)
    train_config = train_config.resolved(spec.num_items)
    log(f"{tag}: training " + (f"{train_config.train_steps:,} steps" if train_config.train_steps
                               else f"until validation stops improving (at most "
                                    f"{train_config.max_train_steps:,} steps)")
        + f" into {train_config.model_dir}")
    driver.train_and_evaluate(config.model, train_config,
                              checkpoint_metrics=checkpoint_recall.for_training(train_config))
    log(f"{tag}: trained in {time.monotonic() - t:.1f} s")

    quiet = lambda _: None  # noqa: E731
    metrics = {"fold": fold, "folds": config.folds, "rule": spec.split["rule"],
               "layout_dir": prepare_config.output, "model_dir": train_config.model_dir,
               "splits": splits, "split": spec.split}
    evaluation = dataclasses.replace(config.evaluation, per_request=True)
    metrics["dpsr"] = evaluate_lib.evaluate_model(train_config.model_dir,
                                                  prepare_config.output, evaluation, log=quiet)
    if config.bm25:
        metrics["bm25"] = evaluate_lib.evaluate_bm25(prepare_config.output, evaluation,
                                                     log=quiet)
    metrics[PER_QUERY] = {
        system: {name: values.tolist() for name, values in arrays.items()}
        for system, arrays in per_query_lib.take_per_request(
            {k: metrics[k] for k in ("dpsr", "bm25") if k in metrics}).items()}
    for system in ("dpsr", "bm25"):
        if system in metrics:
            log(f"{tag}: {system:5s} " + "  ".join(
                f"{k}={metrics[system][k]:.4f}" for k in TABLE_METRICS if k in metrics[system]))
    if config.zero_shot:
        _zero_shot_stage(config, metrics, tag, log)
    _write_json(metrics_path, metrics)
    if config.hybrid:
        _hybrid_stage(config, fold, metrics, tag, log)
        _write_json(metrics_path, metrics)
    _prune_checkpoints(config, metrics, tag, log)
    return metrics


def _zero_shot_stage(config: CrossvalConfig, metrics: dict, tag: str,
                     log: Callable[[str], None]) -> None:
    """The untrained encoder and its hybrid with BM25 on the fold's held-out requests (into
    `metrics`, with their per-request values)."""
    t = time.monotonic()
    evaluation = dataclasses.replace(config.evaluation, per_request=True)
    results = zero_shot_lib.evaluate_zero_shot(metrics["layout_dir"], evaluation,
                                               pretrained_dir=config.model.pretrained_dir,
                                               log=lambda _: None)
    per_request = per_query_lib.take_per_request(results)
    want = metrics["dpsr"]["requests"]
    for system in ZERO_SHOT_SYSTEMS:
        got = len(next(iter(per_request[system].values())))
        if got != want:
            raise ValueError(f"{tag}: {system} was evaluated on {got} requests, dpsr on {want}")
        metrics[system] = results[system]
        metrics[PER_QUERY][system] = {name: np.asarray(v).tolist()
                                      for name, v in per_request[system].items()}
        log(f"{tag}: {system} " + "  ".join(
            f"{k}={metrics[system][k]:.4f}" for k in TABLE_METRICS if k in metrics[system]))
    log(f"{tag}: zero-shot baselines in {time.monotonic() - t:.1f} s")


def _prune_checkpoints(config: CrossvalConfig, metrics: dict, tag: str,
                       log: Callable[[str], None]) -> None:
    """Keeps only the checkpoint the fold was evaluated with (CrossvalConfig.prune_checkpoints)."""
    keep = metrics["dpsr"].get("checkpoint")
    if not config.prune_checkpoints or not keep or not os.path.isdir(metrics["model_dir"]):
        return
    try:
        pruned = checkpoint_pruning.prune_to(metrics["model_dir"], keep)
    except ValueError as e:     # a moved or hand-edited fold: its numbers still stand
        log(f"{tag}: not pruning its checkpoints: {e}")
        return
    if pruned.removed:
        log(f"{tag}: kept {os.path.basename(pruned.kept)}, the checkpoint evaluated; deleted "
            f"{len(pruned.removed)} other(s) ({pruned.freed_bytes / 2**30:.2f} GiB; "
            f"--noprune_checkpoints keeps them)")


def _spelling_mode(metrics: dict) -> Optional[str]:
    """The --spelling mode a fold's hybrid stage was made with (a stage recorded before the
    modes, with only HYBRID_SPELLING: "on" or "off"), or None when it has none."""
    if HYBRID_SPELLING_CHOICE in metrics:
        return metrics[HYBRID_SPELLING_CHOICE]["mode"]
    if HYBRID_SPELLING in metrics:
        return "on" if metrics[HYBRID_SPELLING] else "off"
    return None


def _has_hybrid_stage(fold_dir: str, metrics: dict, spelling: str, feedback: bool) -> bool:
    """Whether the fold's hybrid stage is done with this spelling mode (a stage from before
    the setting was recorded is redone), with the dense feedback lists when they are wanted."""
    lists = (hybrid_lib.LISTS_FILE,) + ((hybrid_lib.FEEDBACK_LISTS_FILE,) if feedback else ())
    spec = layout_lib.load_layout_spec(metrics["layout_dir"])
    if layout_lib.VALIDATION_SPLIT in spec.record_files:    # what the fusion is chosen on
        lists += (hybrid_lib.VALIDATION_LISTS_FILE,) + (
            (hybrid_lib.VALIDATION_FEEDBACK_LISTS_FILE,) if feedback else ())
    return (hybrid_lib.SERVED in metrics and hybrid_lib.LEXICAL in metrics
            and _spelling_mode(metrics) == spelling
            and all(os.path.isfile(os.path.join(fold_dir, name)) for name in lists))


def _hybrid_stage(config: CrossvalConfig, fold: int, metrics: dict, tag: str,
                  log: Callable[[str], None]) -> None:
    """Index, served dense and lexical evaluation and the lists of one fold (into `metrics`)."""
    t = time.monotonic()
    fold_dir = config.fold_dir(fold)
    log(f"{tag}: building {os.path.join(fold_dir, hybrid_lib.INDEX_DIR)} as `dpsr index` does "
        f"and evaluating the served dense and lexical lists")
    # Made from the lists this stage replaces (the feedback lists are rewritten only when wanted).
    for name in (hybrid_lib.CANDIDATES_FILE, hybrid_lib.FEEDBACK_CANDIDATES_FILE,
                 hybrid_lib.FEEDBACK_LISTS_FILE, hybrid_lib.VALIDATION_LISTS_FILE,
                 hybrid_lib.VALIDATION_CANDIDATES_FILE, hybrid_lib.VALIDATION_FEEDBACK_LISTS_FILE,
                 hybrid_lib.VALIDATION_FEEDBACK_CANDIDATES_FILE):
        for suffix in ("", hybrid_lib.TYPED_SUFFIX, hybrid_lib.SPELLED_SUFFIX):
            stale = os.path.join(fold_dir, hybrid_lib.suffixed(name, suffix))
            if os.path.exists(stale):
                os.remove(stale)
    results, per_request, choice = hybrid_lib.evaluate_fold(
        metrics["model_dir"], metrics["layout_dir"], fold_dir, config.evaluation,
        metrics["dpsr"], log=lambda _: None, spelling=config.spelling,
        feedback=config.dense_feedback, objective=config.fusion_objective)
    metrics[HYBRID_SPELLING] = choice["on"]
    metrics[HYBRID_SPELLING_CHOICE] = choice
    for system, values in per_request.items():
        want = metrics["dpsr"]["requests"]
        if len(next(iter(values.values()))) != want:
            raise ValueError(f"{tag}: {system} was evaluated on "
                             f"{len(next(iter(values.values())))} requests, dpsr on {want}")
    metrics.update(results)
    metrics[PER_QUERY].update({system: {name: np.asarray(v).tolist() for name, v in arrays.items()}
                               for system, arrays in per_request.items()})
    for system in (hybrid_lib.SERVED, hybrid_lib.LEXICAL):
        log(f"{tag}: {system} " + "  ".join(
            f"{k}={metrics[system][k]:.4f}" for k in TABLE_METRICS if k in metrics[system]))
    log(f"{tag}: queries {'spelled' if choice['on'] else 'as typed'} ("
        + (f"validation objective {choice['scores']['with']:.4f} with the speller, "
           f"{choice['scores']['without']:.4f} without" if choice["scores"]
           else choice.get("note", f"--spelling={config.spelling}")) + ")")
    log(f"{tag}: hybrid stage in {time.monotonic() - t:.1f} s")


def _claim_output(output: str, config_dict: dict) -> None:
    """Creates <output> with crossval_config.json, or checks that it holds this very run."""
    path = os.path.join(output, CONFIG_JSON)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != config_dict:
            changed = sorted(k for k in set(previous) | set(config_dict)
                             if previous.get(k) != config_dict.get(k))
            raise ValueError(f"--output={output} holds a cross-validation with other settings "
                             f"(differences in {changed}, see {path}); choose a new --output, "
                             f"or delete it to start over")
        return
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"--output={output} exists and is not a dpsr crossval directory (no "
                         f"{CONFIG_JSON}); choose a new directory")
    os.makedirs(output, exist_ok=True)
    _write_json(path, config_dict)


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
