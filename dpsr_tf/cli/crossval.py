"""dpsr crossval: N-fold cross-validation over query-hash folds (prepare, train, evaluate each).

  dpsr crossval --items=items.tsv [--users=users.tsv] --interactions=interactions.tsv \
      --output=DIR --folds=5 [--max_train_queries=150] [--bm25] [--hybrid] [tokenizer flags] \
      [--zero_shot] [--flagfile=train.flags] [any dpsr train flag, e.g. --train_steps=3000]

Fold F holds out the queries whose md5 % N == F (`dpsr prepare --split_fold=F
--split_modulus=N`); every fold trains the same model from the same flags. Writes
DIR/fold_F/{layout,model,metrics.json}, DIR/summary.json (mean and std per metric per system)
and prints a table. Rerunning the same command resumes: finished folds are reused. --hybrid adds
DIR/fold_F/{index,hybrid_lists*.npz,fusion_candidates*.npz,hybrid.json} and the systems
dpsr_served, lexical and hybrid, its fusion chosen on the fold's validation split
(evaluation/crossval_hybrid.py). Distilled folds: --teacher_dir=T/fold_{fold}/model, T the
teacher's crossval output with the same prepare flags; fold F distills from T/fold_F/model.
"""
import os
import sys

from absl import flags

from dpsr_tf.cli import prepare_flags, training_flags
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.evaluation import crossval as crossval_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_objective
from dpsr_tf.model.progress import quiet_tf_logging

_OUTPUT = flags.DEFINE_string("output", None,
                              "Directory of the run: fold_F/{layout,model,metrics.json}, "
                              "summary.json.")
_FOLDS = flags.DEFINE_integer("folds", 5, "N: fold F evaluates on the queries whose "
                              "md5(query) % N == F.")
_MAX_TRAIN_QUERIES = flags.DEFINE_integer(
    "max_train_queries", 0, "Keep only this many distinct train queries per fold (seeded by "
    "--prepare_seed), to measure small-log behaviour. 0 = keep all.")
_PREPARE_SEED = flags.DEFINE_integer("prepare_seed", 0, "Seed of prepare: the train records' "
                                     "order, the --max_train_queries choice and the "
                                     "validation queries of each fold.")
_BM25 = flags.DEFINE_bool("bm25", False, "Also evaluate BM25 (bm25s) on every fold.")
_HYBRID = flags.DEFINE_bool(
    "hybrid", False, "Also build every fold's index as `dpsr index` does (FAISS + lexical) and "
    "evaluate the served dense ranking (dpsr_served), the lexical index (lexical) and the "
    "served hybrid, whose fusion and dense feedback for fold F are chosen on its validation "
    "split (carved from its training queries), as `dpsr export` chooses them. "
    "May be added to a finished run: its models are reused.")
_ZERO_SHOT = flags.DEFINE_bool(
    "zero_shot", False, "Also evaluate on every fold the baselines a user would try first: "
    "the pretrained encoder of --pretrained_dir (empty: all-MiniLM-L6-v2) used as it ships over "
    "the titles (zero_shot) and BM25 over every field fused with it by reciprocal rank, k = 60 "
    "(zero_shot_hybrid), with paired tests. May be added to a finished run: its models are "
    "reused.")
_SPELLING = flags.DEFINE_enum(
    "spelling", "auto", ["auto", "on", "off"], "--hybrid: whether the served dense and lexical "
    "searches see the queries as each fold's catalog speller corrects them (docs/spelling.md). "
    "auto: chosen per fold on its validation split as `dpsr export --spelling=auto` chooses "
    "(on only where the best fusion scores strictly higher with the speller); on / off: for "
    "every fold.")
_FUSION_OBJECTIVE = flags.DEFINE_list(
    "fusion_objective", list(fusion_objective.OBJECTIVE), "--hybrid: the metrics whose "
    "mean chooses each fold's fusion, as `dpsr export --fusion_objective` (recall@N with N "
    "among the evaluation's cut-offs, ndcg@10, mrr@10).")
_DENSE_FEEDBACK = flags.DEFINE_bool(
    "dense_feedback", True, "--hybrid: each fold's choice is among the fusions without and "
    "with dense feedback, as `dpsr export --dense_feedback=auto` chooses (docs/export.md); "
    "--nodense_feedback: without only.")
_PRUNE_CHECKPOINTS = flags.DEFINE_bool(
    "prune_checkpoints", True, "Once a fold is evaluated, delete every checkpoint of its model "
    "but the one evaluated (about 0.5 GB each on the synthetic catalog); "
    "--noprune_checkpoints keeps all that training left.")
_PAIRED_SAMPLES = flags.DEFINE_integer(
    "paired_samples", 10000, "Bootstrap resamples and random sign flips of each pooled paired "
    "test (the smallest reportable p is about 1 / this); fewer is faster on many requests.")
_NUM_RANDOM = flags.DEFINE_integer("num_random", 1024, "Evaluation: random items per clicked "
                                   "pair (Top-k).")
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 0, "Evaluation: seed of the random items.")
_MIN_GAIN = flags.DEFINE_float("min_gain", None, "Evaluation: relevant iff gain >= this "
                               "(default: --eval_min_gain).")

flags.mark_flags_as_required(prepare_flags.REQUIRED + ["output"])


def config_from_flags():
    """The CrossvalConfig of the flags (flags.ValidationError / ValueError name the bad flag)."""
    if _FOLDS.value < 2:
        raise flags.ValidationError(f"--folds={_FOLDS.value}: must be >= 2 (fold F of N holds "
                                    f"out the queries whose md5 % N == F; 5 is usual)")
    # Each fold has its own layout and model directory under --output; a train flagfile's
    # --layout_dir / --model_dir do not apply.
    for name in ("layout_dir", "model_dir"):
        if flags.FLAGS[name].present:
            print(f"dpsr crossval: ignoring --{name}={flags.FLAGS[name].value}: fold F uses "
                  f"{_OUTPUT.value}/fold_F/{'layout' if name == 'layout_dir' else 'model'}",
                  file=sys.stderr)
        flags.FLAGS[name].value = os.path.join(_OUTPUT.value, "fold_0", name)  # set per fold
    prepare = prepare_lib.PrepareConfig(
        output=_OUTPUT.value, seed=_PREPARE_SEED.value,
        **prepare_flags.config_kwargs(_MAX_TRAIN_QUERIES.value))
    return crossval_lib.CrossvalConfig(
        output=_OUTPUT.value, folds=_FOLDS.value, prepare=prepare,
        model=training_flags.model_config_from_flags(),
        train=training_flags.train_config_from_flags(),
        evaluation=evaluate_lib.EvalConfig(min_gain=_MIN_GAIN.value,
                                           num_random=_NUM_RANDOM.value, seed=_EVAL_SEED.value),
        bm25=_BM25.value, hybrid=_HYBRID.value, zero_shot=_ZERO_SHOT.value,
        spelling=_SPELLING.value,
        fusion_objective=tuple(_FUSION_OBJECTIVE.value), dense_feedback=_DENSE_FEEDBACK.value,
        prune_checkpoints=_PRUNE_CHECKPOINTS.value)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"dpsr crossval: unexpected arguments {argv[1:]}; every input is a --flag "
                 f"(train flags too, or --flagfile=FILE)")
    quiet_tf_logging()
    try:
        config = config_from_flags()
        if _PAIRED_SAMPLES.value < 1:
            raise flags.ValidationError(f"--paired_samples={_PAIRED_SAMPLES.value}: must be >= 1")
        crossval_lib.run(config, paired_samples=_PAIRED_SAMPLES.value)
    except (schema.SchemaError, ValueError, OSError, flags.Error) as e:
        print(f"dpsr crossval: error: {e}", file=sys.stderr)
        sys.exit(1)
