"""dpsr report: a static HTML page of trained models, beside BM25 (docs/report.md).

`dpsr report --model_dir=M [--compare=M2,M3] [--index_dir=I] --output=report/
 [--alpha_sweep=0,0.25,0.5,0.75,1 --sweep_steps=300]` evaluates every model and BM25 on the
main model's split (and the hybrid through I when it holds a lexical index), reads the
training curves, measures per-head usage, draws a t-SNE map of the item embeddings (one panel
per model over the same items, with each model's category purity) and, when
asked, trains one small model per alpha; writes OUTPUT/index.html, OUTPUT/evaluation.json and
OUTPUT/figures/*.png.
"""
import os
import sys

from absl import flags

from dpsr_tf.model.progress import quiet_tf_logging
from dpsr_tf.report import ReportConfig, build_report
from dpsr_tf.report.commands import shell_join

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Main model directory (dpsr train).")
_COMPARE = flags.DEFINE_list("compare", [], "Other model directories shown beside it.")
_INDEX_DIR = flags.DEFINE_string("index_dir", None,
                                 "`dpsr index` build directory of the main model (index "
                                 "numbers; hybrid row if it holds a lexical index).")
_OUTPUT = flags.DEFINE_string("output", None, "Report directory (created).")
_SPLIT = flags.DEFINE_string("split", "eval", "Layout split evaluated.")
_NUM_RANDOM = flags.DEFINE_integer("num_random", 1024, "Random items per clicked pair (Top-k).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of random items, map sample and t-SNE.")
_MAP_ITEMS = flags.DEFINE_integer("map_items", 1500, "Items on the t-SNE map.")
_MAP_QUERIES = flags.DEFINE_integer("map_queries", 3, "Queries marked on the map.")
_PURITY_K = flags.DEFINE_integer("purity_k", 10, "Nearest items per item of the category "
                                 "purity (cosine over the item embeddings).")
_QUERIES = flags.DEFINE_list("queries", [], "Eval query texts to mark on the map (default: "
                             "those whose heads disagree most).")
_SENSE_CATALOG = flags.DEFINE_string(
    "sense_catalog", None, "A synthetic catalog (`dpsr generate-synthetic` output): mark its "
    "polysemous queries on the map, each head's items coloured by sense (the paper's Figure 5).")
_ALPHA_SWEEP = flags.DEFINE_list("alpha_sweep", [], "alpha values of the Figure 7 sweep, e.g. "
                                 "0,0.25,0.5,0.75,1 (trains one small model each).")
_SWEEP_STEPS = flags.DEFINE_integer("sweep_steps", 300, "Training steps per sweep model.")
_TABLE2 = flags.DEFINE_list(
    "table2", [], "The paper's Table 2 from `dpsr evaluate --output` files: ROW=FILE[#SYSTEM], "
    "rows BM25, BM25-u&b, DSSM, DPSR, DPSR-p, DPSR-h (SYSTEM default: bm25, bm25_ub, else "
    "dpsr); rows not given show absent.")
_PER_QUERY = flags.DEFINE_list(
    "per_query", [], "Paired comparison from `dpsr evaluate --per_query` files, [LABEL=]FILE.")
_PAIRED_BASELINE = flags.DEFINE_string("paired_baseline", None,
                                       "Compare every system against this one (default: "
                                       "every pair).")
_KEEP = flags.DEFINE_bool("keep_sweep_checkpoints", False, "Keep the sweep models' checkpoints.")


def _flags_given():
    """The flags this process was started with (`dpsr report FLAGS` or `... cli report FLAGS`)."""
    args = sys.argv[1:]
    return args[1:] if args and args[0] == "report" else args


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr report: unexpected arguments {argv[1:]}")
    if not _OUTPUT.value or not (_MODEL_DIR.value or _TABLE2.value or _PER_QUERY.value):
        raise SystemExit("dpsr report: give --output=REPORT_DIR and --model_dir=MODEL (and/or "
                         "--table2=ROW=FILE,... / --per_query=FILE,FILE)")
    try:
        alphas = tuple(float(a) for a in _ALPHA_SWEEP.value)
    except ValueError:
        raise SystemExit(f"dpsr report: --alpha_sweep takes numbers in [0, 1], got "
                         f"{_ALPHA_SWEEP.value}") from None
    quiet_tf_logging()
    cfg = ReportConfig(
        model_dirs=tuple(([_MODEL_DIR.value] if _MODEL_DIR.value else []) +
                         list(_COMPARE.value)), output=_OUTPUT.value,
        index_dir=_INDEX_DIR.value, split=_SPLIT.value, num_random=_NUM_RANDOM.value,
        seed=_SEED.value, map_items=_MAP_ITEMS.value, map_queries=_MAP_QUERIES.value,
        purity_k=_PURITY_K.value, sense_catalog=_SENSE_CATALOG.value,
        wanted_queries=tuple(_QUERIES.value), alpha_sweep=alphas,
        sweep_steps=_SWEEP_STEPS.value, keep_sweep_checkpoints=_KEEP.value,
        command=shell_join(["dpsr", "report"] + _flags_given()),
        table2=tuple(_TABLE2.value), per_query=tuple(_PER_QUERY.value),
        paired_baseline=_PAIRED_BASELINE.value)
    try:
        path = build_report(cfg)
    except (OSError, ValueError, ImportError) as e:
        raise SystemExit(f"dpsr report: {e}") from None
    print(os.path.abspath(path))
