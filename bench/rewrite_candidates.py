"""Dumps a rewriter's unfiltered candidates (and its most probable title) for the requests of a
layout split, so that filters and merge rules can be chosen offline (bench/rewrite_tune.py).

    python bench/rewrite_candidates.py --rewriter_dir=R --layout_dir=L --set=holdout \
        --holdout_percent=10 --seed=0 --output=cands.jsonl

--set=holdout: the train split's requests held out of the rewriter's training
(dpsr_tf/evaluation/rewrites.holdout_eval_set); --set=eval: the layout's eval split.
One JSON line per distinct query: {"query", "title", "candidates": [[text, score], ...]}
(deduplicated, best first; nothing else filtered). Decoding: `dpsr rewrite`'s defaults
(sampling, 8 candidates, top-k 20, top-p 0.9, no repeated unit) with --seed. --title_source=dense
(with --model_dir, --index_dir, --num_titles): the forward model picks the title among the DPSR
model's top items, as `dpsr rewrite --title_source=dense`.
"""
import json
import time

from absl import app, flags

from dpsr_tf.rewriting.title_candidates import NUM_TITLES

_REWRITER = flags.DEFINE_string("rewriter_dir", None, "dpsr train-rewriter --model_dir.")
_LAYOUT = flags.DEFINE_string("layout_dir", None, "Layout.")
_SET = flags.DEFINE_enum("set", "holdout", ["holdout", "eval"], "Which requests' queries.")
_HOLDOUT = flags.DEFINE_integer("holdout_percent", 10, "As the rewriter was trained with.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STRATEGY = flags.DEFINE_enum("strategy", "sample", ["greedy", "beam", "sample"], "Decoding.")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL to write.")
_CKPT = flags.DEFINE_string("checkpoint", None, "A checkpoint of --rewriter_dir (default: latest).")
_TITLE_SOURCE = flags.DEFINE_enum("title_source", "generated", ["generated", "dense"],
                                  "dpsr rewrite --title_source.")
_MODEL = flags.DEFINE_string("model_dir", None, "--title_source=dense: the DPSR model.")
_INDEX = flags.DEFINE_string("index_dir", None, "--title_source=dense: its index build.")
_NUM_TITLES = flags.DEFINE_integer("num_titles", NUM_TITLES,
                                   "--title_source=dense: candidate titles.")
flags.mark_flags_as_required(["rewriter_dir", "layout_dir", "output"])


def main(argv):
    del argv
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import eval_set as eval_set_lib
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.evaluation import rewrites as rewrites_lib
    from dpsr_tf.rewriting import generate
    spec = layout_lib.load_layout_spec(_LAYOUT.value)
    if _SET.value == "holdout":
        eval_set = rewrites_lib.holdout_eval_set(spec, _HOLDOUT.value)
    else:
        eval_set = eval_set_lib.load_eval_set(spec, "eval")
    queries = list(dict.fromkeys(eval_set.queries))
    titles = None
    if _TITLE_SOURCE.value == "dense":
        from dpsr_tf.rewriting.title_candidates import DenseTitleSource
        titles = DenseTitleSource(_MODEL.value, _INDEX.value, _LAYOUT.value).top_titles(
            queries, _NUM_TITLES.value)
    start = time.time()
    rows = generate.Rewriter(_REWRITER.value, _CKPT.value).rewrite(
        queries, generate.DecodeConfig(strategy=_STRATEGY.value, seed=_SEED.value), log=None,
        titles=titles)
    seconds = time.time() - start
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"query": r.query, "title": r.title,
                                "candidates": [[w.text, w.score] for w in r.rewrites]},
                               ensure_ascii=False) + "\n")
    print(f"{len(rows)} queries in {seconds:.0f}s ({len(rows) / max(seconds, 1e-9):.2f}/s)")


if __name__ == "__main__":
    app.run(main)
