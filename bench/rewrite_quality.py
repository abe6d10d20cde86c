"""Lexical and hybrid retrieval with and without rewrite tables, on a layout split.

    python bench/rewrite_quality.py --layout_dir=L --index_dir=I --rewrites=T1.tsv,T2.tsv \
        [--model_dir=M]   # adds the hybrid rows (the served dense list of the index build)
        [--choose_fusion] # the hybrid rows fuse by what `dpsr export` would choose on the split:
                          # "hybrid" by the choice without the table, "hybrid+rewrites" by the
                          # choice with it (else both by the default RRF)

Prints one JSON object per (table, rewrite_weight) (dpsr_tf/evaluation/rewrites.py); results
go in docs/results.md. The dense lists are computed once for all tables.
"""
import json

from absl import app, flags

from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.search.rewrite_merge import COMBINES, RewriteConfig

_LAYOUT = flags.DEFINE_string("layout_dir", None, "Layout (its eval split is measured).")
_INDEX = flags.DEFINE_string("index_dir", None, "Index build with a lexical index.")
_TABLES = flags.DEFINE_list("rewrites", None, "Rewrite tables.")
_MODEL = flags.DEFINE_string("model_dir", None, "DPSR model of the index build (hybrid rows).")
_MAX = flags.DEFINE_integer("max_rewrites", 3, "Rewrites searched per query.")
_WEIGHTS = flags.DEFINE_list("rewrite_weight", [str(RewriteConfig().rewrite_weight)],
                            "Factors on rewrite BM25 scores.")
_SPLIT = flags.DEFINE_string("split", "eval", "Layout split.")
_MAX_REQ = flags.DEFINE_integer("max_requests", 0, "Only the split's first N requests (0 = all).")
_DENSE_CACHE = flags.DEFINE_string("dense_cache", None, "An .npz of the dense lists: read when "
                                   "it exists, else written (the embedding is the slow part).")
_COMBINE = flags.DEFINE_enum("rewrite_combine", RewriteConfig().combine, list(COMBINES),
                             "RewriteConfig.combine.")
_PER_QUERY = flags.DEFINE_string("per_query_dir", None, "Write per-request JSONL files here "
                                 "(one per table and weight; `dpsr compare` reads them).")
_CHOOSE = flags.DEFINE_bool("choose_fusion", False, "Fuse the hybrid rows by the fusion "
                            "`dpsr export` would choose on the split, without and with the table.")
flags.mark_flags_as_required(["layout_dir", "index_dir", "rewrites"])


class _Chooser:
    """The fusions `dpsr export` would choose on the split: without a table (chosen once) and
    with each table."""

    def __init__(self, dense):
        # pylint: disable=import-outside-toplevel
        from dpsr_tf.data import eval_set as eval_set_lib
        from dpsr_tf.data import layout as layout_lib
        from dpsr_tf.evaluation import fusion_choice
        from dpsr_tf.indexing.lexical_index import LexicalSearcher
        spec = layout_lib.load_layout_spec(_LAYOUT.value)
        self.dense, self.k = dense, dense[1].shape[1]
        self.eval_set = eval_set_lib.load_eval_set(spec, _SPLIT.value)
        self.searcher = LexicalSearcher(_INDEX.value, layout_lib.load_item_ids(spec))
        queries = self.eval_set.queries
        self.without = fusion_choice.choose_fusion(
            *dense, lambda f: self.searcher.search(queries, f.lexical_k or self.k,
                                                   f.lexical_min_score),
            self.eval_set, self.k).config

    def with_table(self, path: str, cfg):
        # pylint: disable=import-outside-toplevel
        from dpsr_tf.evaluation import fusion_choice
        from dpsr_tf.evaluation import rewrites as rewrites_lib
        from dpsr_tf.rewriting import table as table_lib
        queries = self.eval_set.queries
        texts = rewrites_lib.rewrite_texts(queries, table_lib.read_table(path),
                                           cfg.max_rewrites)
        return fusion_choice.choose_fusion(
            *self.dense, rewrites_lib.lexical_lists_with_rewrites(
                self.searcher, queries, texts, cfg, self.k), self.eval_set, self.k).config


def main(argv):
    del argv
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import rewrites as rewrites_lib
    import os
    import numpy as np
    dense = None
    if _DENSE_CACHE.value and os.path.exists(_DENSE_CACHE.value):
        with np.load(_DENSE_CACHE.value) as z:
            dense = (z["scores"], z["rows"])
    elif _MODEL.value:
        from dpsr_tf.evaluation import hybrid
        run = hybrid.open_hybrid(_MODEL.value, _INDEX.value, _LAYOUT.value)
        dense = (run.dense_scores, run.dense_rows)
        if _DENSE_CACHE.value:
            np.savez(_DENSE_CACHE.value, scores=dense[0], rows=dense[1])
    from dpsr_tf.evaluation import per_query as per_query_lib
    chooser = None
    if _CHOOSE.value and dense is not None:
        if _MAX_REQ.value:
            raise SystemExit("--choose_fusion chooses on the whole split: drop --max_requests")
        chooser = _Chooser(dense)
    for path in _TABLES.value:
        for weight in _WEIGHTS.value:
            cfg = RewriteConfig(_MAX.value, float(weight), _COMBINE.value)
            fusions = {}
            if chooser is not None:
                fusions = {"without": chooser.without, "with": chooser.with_table(path, cfg)}
            out = rewrites_lib.evaluate_rewrites(
                _LAYOUT.value, _INDEX.value, path, cfg, _SPLIT.value, dense,
                fusion=fusions.get("with", FusionConfig()), max_requests=_MAX_REQ.value,
                per_request=bool(_PER_QUERY.value))
            if fusions:
                # The hybrid without the table fuses by its own choice.
                out["hybrid"] = rewrites_lib.evaluate_rewrites(
                    _LAYOUT.value, _INDEX.value, path, cfg, _SPLIT.value, dense,
                    fusion=fusions["without"], per_request=bool(_PER_QUERY.value))["hybrid"]
                out["fusion_without"] = fusions["without"].to_json()
                out["fusion_with"] = fusions["with"].to_json()
            if _PER_QUERY.value:
                eval_set = out.pop("eval_set")
                per_system = per_query_lib.take_per_request(out)
                os.makedirs(_PER_QUERY.value, exist_ok=True)
                name = (os.path.basename(path).rsplit(".", 1)[0]
                        + f"_{_COMBINE.value}{float(weight)}.jsonl")
                per_query_lib.write_jsonl(os.path.join(_PER_QUERY.value, name), _SPLIT.value,
                                          eval_set, per_system)
            out.update({"table": path, "rewrite_weight": float(weight),
                        "rewrite_combine": _COMBINE.value})
            print(json.dumps(out, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    app.run(main)
