"""What dense feedback over shards costs a request through `dpsr proxy`: two rounds, side by side.

    python bench/sharded_feedback_cost.py --model_dir=M --plain=BASE --feedback=BASE \
        [--k=100] [--rounds=3] [--queries=300]

BASE is a sharded `dpsr export --export_base` (its BASE_shard<i> directories): once with
--dense_feedback=off, once with it on. One `dpsr serve` per shard directory and one `dpsr proxy`
routing "plain" and "feedback" to them are started; the layout's eval queries are sent one
request of one query at a time, the two models alternating round by round so that the machine's
load falls on both alike. Prints per model the p50 / p90 / p99 latency in ms and each percentile's
ratio to the plain model's. The feedback model answers in two rounds (docs/export.md "Dense
feedback over shards"): every shard's first hits, then every shard's search along the pooled
direction; the query tower runs in both.
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _shard_bases(base: str):
    shards = sorted(glob.glob(f"{base}_shard*"), key=lambda p: int(p.rsplit("_shard", 1)[1]))
    if len(shards) < 2:
        raise SystemExit(f"{base}: expected {base}_shard0, {base}_shard1, ... (a sharded export)")
    return shards


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="the model (for its eval queries)")
    parser.add_argument("--plain", required=True, help="export base without dense feedback")
    parser.add_argument("--feedback", required=True, help="export base with dense feedback")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300, help="eval queries per round")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.demo import server_processes as process
    from dpsr_tf.model.model_dir import load_model_config
    from tests.support.serving_testing import predict_request

    _, saved = load_model_config(args.model_dir)
    queries = layout_lib.load_eval_set(layout_lib.load_layout_spec(saved.layout_dir),
                                       "eval").queries[:args.queries]
    models = {"plain": _shard_bases(args.plain), "feedback": _shard_bases(args.feedback)}
    servers = {name: [process.model_server_process(base, "dpsr", name=f"{name}{i}")
                      for i, base in enumerate(bases)] for name, bases in models.items()}
    process.start_all([s for group in servers.values() for s in group])
    try:
        proxy = process.start_proxy(
            {name: tuple((s.address,) for s in group) for name, group in servers.items()},
            backend_model_name="dpsr", deadline_ms=30000)
        stub = process.prediction_stub(proxy.address)
        for name in models:   # warm: first runs allocate
            for q in queries[:20]:
                stub.Predict(predict_request(name, [q], k=args.k), timeout=30)
        times = {name: [] for name in models}
        for r in range(args.rounds):
            for name in models:
                for q in queries:
                    request = predict_request(name, [q], k=args.k)
                    start = time.perf_counter()
                    stub.Predict(request, timeout=30)
                    times[name].append((time.perf_counter() - start) * 1e3)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        process.stop_all()
    base = np.percentile(times["plain"], [50, 90, 99])
    print(f"{len(models['plain'])} shards, k={args.k}")
    print(f"{'model':10s} {'n':>5s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s}  ratio")
    for name, t in times.items():
        p = np.percentile(t, [50, 90, 99])
        print(f"{name:10s} {len(t):5d} {p[0]:7.2f} {p[1]:7.2f} {p[2]:7.2f}  "
              + " / ".join(f"{x:.2f}" for x in p / base))


if __name__ == "__main__":
    main()
