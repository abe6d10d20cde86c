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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from servable_cost import eval_queries, print_latencies, time_alternating  # noqa: E402  (bench/)


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
    from dpsr_tf.demo import server_processes as process
    from tests.support.serving_testing import predict_request

    queries = eval_queries(args.model_dir, args.queries)
    models = {"plain": _shard_bases(args.plain), "feedback": _shard_bases(args.feedback)}
    servers = {name: [process.model_server_process(base, "dpsr", name=f"{name}{i}")
                      for i, base in enumerate(bases)] for name, bases in models.items()}
    process.start_all([s for group in servers.values() for s in group])
    try:
        proxy = process.start_proxy(
            {name: tuple((s.address,) for s in group) for name, group in servers.items()},
            backend_model_name="dpsr", deadline_ms=30000)
        stub = process.prediction_stub(proxy.address)
        times = time_alternating(
            {name: lambda q, n=name: stub.Predict(predict_request(n, [q], k=args.k), timeout=30)
             for name in models}, queries, args.rounds)
    finally:
        process.stop_all()
    print(f"{len(models['plain'])} shards, k={args.k}")
    print_latencies(times, "model")


if __name__ == "__main__":
    main()
