"""Latency of the DPR re-ranking stage: serving_default (retrieval) beside retrieve_rerank
(retrieval + DPR over the top rerank_n) and rerank (DPR over a given list), on one exported
servable, in one process, interleaved query by query so load changes hit both alike.

    python bench/rerank_bench.py --servable=/models/dpsr_rerank/1 --queries=200 --k=100

Prints JSON: per signature p50/p90/p99 ms of single-query calls and the ratio to
serving_default. docs/ranking.md quotes it with the machine's load.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _percentiles(ms):
    ms = np.asarray(ms)
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p90": round(float(np.percentile(ms, 90)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servable", required=True, help="an exported version directory")
    ap.add_argument("--queries_file", default=None,
                    help="one query per line; default the layout queries in the servable info")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dpsr_tf import op_library  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.model.model_dir import CONFIG_FILE  # pylint: disable=import-outside-toplevel
    op_library.load()
    info = json.load(open(os.path.join(args.servable, "assets.extra", "dpsr_servable.json")))
    if args.queries_file:
        queries = [q for q in open(args.queries_file, encoding="utf-8").read().split("\n") if q]
    else:
        layout = info["model"].get("layout_dir") or json.load(open(os.path.join(
            info["model_dir"], CONFIG_FILE)))["layout"]["layout_dir"]
        queries = layout_lib.load_queries(layout)
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.choice(len(queries), args.queries, replace=False)]
    sess = tf.compat.v1.Session(graph=tf.Graph())
    with sess.graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], args.servable)

    def call(name, feeds, outputs):
        sig = meta.signature_def[name]
        return sess.run({k: sig.outputs[k].name for k in outputs},
                        {sig.inputs[k].name: v for k, v in feeds.items()})

    times = {"serving_default": [], "retrieve_rerank": [], "rerank": []}
    k = np.array(args.k, np.int32)
    for q in queries[:5]:                                  # warm up
        call("retrieve_rerank", {"query": [q], "k": k}, ["item_ids"])
    for q in queries:
        t0 = time.perf_counter()
        ids = call("serving_default", {"query": [q], "k": k}, ["item_ids"])["item_ids"]
        t1 = time.perf_counter()
        call("retrieve_rerank", {"query": [q], "k": k}, ["item_ids"])
        t2 = time.perf_counter()
        call("rerank", {"query": [q], "item_ids": ids}, ["scores"])
        t3 = time.perf_counter()
        times["serving_default"].append((t1 - t0) * 1e3)
        times["retrieve_rerank"].append((t2 - t1) * 1e3)
        times["rerank"].append((t3 - t2) * 1e3)
    base = np.median(times["serving_default"])
    out = {name: dict(_percentiles(ms), ratio_p50=round(float(np.median(ms) / base), 2))
           for name, ms in times.items()}
    out.update({"queries": len(queries), "k": args.k, "rerank_n": info.get("rerank_n"),
                "num_items": info.get("num_items"), "load_avg": os.getloadavg()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
