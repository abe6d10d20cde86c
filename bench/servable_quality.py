"""Retrieval quality of an exported servable itself: every eval request through the SavedModel.

`dpsr evaluate --hybrid` scores the served rule with NumPy (fuse_np over the served lists); this
check exports the model (hybrid when the index build has a lexical index) and runs every eval
request of the layout through the SavedModel's serving_default in a TF session, k = 1,000, then
scores the returned item ids with the same metrics. The two must agree (docs/results.md).

    python bench/servable_quality.py --model_dir=M --index_dir=I [--export_base=/tmp/q] [--nohybrid]
    python bench/servable_quality.py --model_dir=M --servable=/models/dpsr/1   # one `dpsr export` made
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--index_dir", help="Export from this index build (default fusion).")
    parser.add_argument("--servable", help="Or score this exported version as it is.")
    parser.add_argument("--export_base", default="/tmp/dpsr_servable_quality")
    parser.add_argument("--nohybrid", action="store_true")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from dpsr_tf import op_library
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.evaluation import evaluate as evaluate_lib
    from dpsr_tf.evaluation import metrics as metrics_lib
    from dpsr_tf.model.model_dir import load_model_config
    from dpsr_tf.export.saved_model_export import export_servable
    from dpsr_tf.export.servable_graph import ServableConfig

    if bool(args.index_dir) == bool(args.servable):
        parser.error("give --index_dir (export, then score) or --servable (score it)")
    path = args.servable
    if not path:
        shutil.rmtree(args.export_base, ignore_errors=True)
        path = export_servable(args.model_dir, args.index_dir, args.export_base,
                               servable=ServableConfig(default_k=100, max_k=max(1000, args.k),
                                                       hybrid=not args.nohybrid))
    op_library.load()
    _, saved = load_model_config(args.model_dir)
    spec = layout_lib.load_layout_spec(saved.layout_dir)
    eval_set, _ = evaluate_lib.load_split(spec, evaluate_lib.EvalConfig())
    row_of = {item_id: row for row, item_id in enumerate(layout_lib.load_item_ids(spec))}
    rows, sources = [], []
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        sig = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path).signature_def[
            "serving_default"]
        fetch = {k: sig.outputs[k].name for k in ("item_ids", "source") if k in sig.outputs}
        for lo in range(0, len(eval_set.queries), args.batch):
            out = sess.run(fetch, {sig.inputs["query"].name: eval_set.queries[lo:lo + args.batch],
                                   sig.inputs["k"].name: args.k})
            rows.append(np.vectorize(lambda b: row_of.get(b.decode("utf-8"), -1),
                                     otypes=[np.int64])(out["item_ids"]))
            if "source" in out:
                sources.append(out["source"])
    metrics = metrics_lib.retrieval_metrics(np.concatenate(rows), eval_set.relevant_splits,
                                            eval_set.relevant_rows, eval_set.relevant_gains)
    if sources:
        top = np.concatenate(sources)[:, :10]
        metrics.update({f"share_{s}@10": float((top == s.encode()).mean())
                        for s in ("dense", "lexical", "both")})
    metrics["servable"] = path
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
