"""Lexical and hybrid retrieval with and without a rewrite table, on a layout split.

    python bench/rewrite_quality.py --layout_dir=L --index_dir=I --rewrites=T.tsv \
        [--model_dir=M]   # adds the hybrid rows (the served dense list of the index build)

Prints JSON (dpsr_tf/evaluation/rewrites.py); results go in docs/results.md.
"""
import json

from absl import app, flags

from dpsr_tf.export.rewrite_merge import RewriteConfig

_LAYOUT = flags.DEFINE_string("layout_dir", None, "Layout (its eval split is measured).")
_INDEX = flags.DEFINE_string("index_dir", None, "Index build with a lexical index.")
_TABLE = flags.DEFINE_string("rewrites", None, "Rewrite table.")
_MODEL = flags.DEFINE_string("model_dir", None, "DPSR model of the index build (hybrid rows).")
_MAX = flags.DEFINE_integer("max_rewrites", 3, "Rewrites searched per query.")
_WEIGHT = flags.DEFINE_float("rewrite_weight", 0.8, "Factor on rewrite BM25 scores.")
_SPLIT = flags.DEFINE_string("split", "eval", "Layout split.")
flags.mark_flags_as_required(["layout_dir", "index_dir", "rewrites"])


def main(argv):
    del argv
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import rewrites as rewrites_lib
    dense = None
    if _MODEL.value:
        from dpsr_tf.evaluation import hybrid
        run = hybrid.open_hybrid(_MODEL.value, _INDEX.value, _LAYOUT.value)
        dense = (run.dense_scores, run.dense_rows)
    out = rewrites_lib.evaluate_rewrites(_LAYOUT.value, _INDEX.value, _TABLE.value,
                                         RewriteConfig(_MAX.value, _WEIGHT.value),
                                         _SPLIT.value, dense)
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    app.run(main)
