"""Full-corpus quality of what a servable returns with and without its re-ranking stage:
every test request of a layout (load_eval_set: the dashboard protocol) through
`serving_default` and `retrieve_rerank`, scored by dpsr_tf.evaluation.metrics.

    python bench/rerank_quality.py --servable=/models/dpsr/1 --layout_dir=LAYOUT --k=100

Prints JSON {signature: {recall@10, recall@100, recall@1000 (those below --k), recall@K,
ndcg@10, mrr@10, requests}}: with --k=1000 and a servable exported with --rerank_n=1000 the
re-ranked list's Recall@100 says what re-ranking the whole retrieval list is worth.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servable", required=True)
    ap.add_argument("--layout_dir", required=True)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dpsr_tf import op_library  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import eval_set as eval_set_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation.metrics import retrieval_metrics  # pylint: disable=import-outside-toplevel
    op_library.load()
    ev = eval_set_lib.load_eval_set(args.layout_dir)
    row_of = layout_lib.load_item_id_map(args.layout_dir)
    sess = tf.compat.v1.Session(graph=tf.Graph())
    with sess.graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], args.servable)
    if "retrieve_rerank" not in meta.signature_def:
        raise SystemExit(f"{args.servable} has no retrieve_rerank signature: export it with "
                         f"`dpsr export --ranker_dir=...`")
    k = np.array(args.k, np.int32)
    lists = {"serving_default": [], "retrieve_rerank": []}
    for lo in range(0, len(ev), args.batch):
        for name, parts in lists.items():
            sig = meta.signature_def[name]
            ids = sess.run(sig.outputs["item_ids"].name,
                           {sig.inputs["query"].name: ev.queries[lo:lo + args.batch],
                            sig.inputs["k"].name: k})
            parts.append(np.array([[row_of.get(x.decode(), -1) for x in r] for r in ids]))
    out = {}
    for name, parts in lists.items():
        m = retrieval_metrics(np.concatenate(parts), ev.relevant_splits, ev.relevant_rows,
                              ev.relevant_gains,
                              recall_ks=sorted({c for c in (10, 100, 1000) if c < args.k}
                                               | {args.k}))
        out[name] = {key: round(float(v), 4) for key, v in m.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
