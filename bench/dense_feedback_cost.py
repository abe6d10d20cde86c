"""What dense feedback costs a request: two exported servables of one model, side by side.

    python bench/dense_feedback_cost.py --model_dir=M --servables=/s/plain/1,/s/feedback/1 \
        [--k=100] [--rounds=3]

Each servable is loaded as TF Serving loads it (one Session over the serve MetaGraph); the
layout's eval queries are sent one request of one query at a time through serving_default,
the servables alternating round by round so that the machine's load falls on both alike.
Prints per servable the p50 / p90 / p99 latency in ms over all rounds and the ratio of each
percentile to the first servable's. A feedback servable runs one more FAISS search per request
(its first search asks for --dense_feedback_items) and a gather over the item table.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="the model (for its eval queries)")
    parser.add_argument("--servables", required=True, help="version directories, comma-separated")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300, help="eval queries per round")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.model.model_dir import load_model_config
    from tests.support.tf1_servable import Tf1Servable

    _, saved = load_model_config(args.model_dir)
    queries = layout_lib.load_eval_set(layout_lib.load_layout_spec(saved.layout_dir),
                                       "eval").queries[:args.queries]
    paths = args.servables.split(",")
    servables = [Tf1Servable(p) for p in paths]
    for s in servables:   # warm: first runs allocate
        for q in queries[:20]:
            s.call("serving_default", {"query": [q], "k": args.k}, ["item_ids"])
    times = [[] for _ in servables]
    for r in range(args.rounds):
        for i, s in enumerate(servables):
            for q in queries:
                start = time.perf_counter()
                s.call("serving_default", {"query": [q], "k": args.k}, ["item_ids"])
                times[i].append((time.perf_counter() - start) * 1e3)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    base = np.percentile(times[0], [50, 90, 99])
    print(f"{'servable':60s} {'n':>5s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s}  ratio")
    for path, t in zip(paths, times):
        p = np.percentile(t, [50, 90, 99])
        print(f"{path:60s} {len(t):5d} {p[0]:7.2f} {p[1]:7.2f} {p[2]:7.2f}  "
              + " / ".join(f"{x:.2f}" for x in p / base))


if __name__ == "__main__":
    main()
