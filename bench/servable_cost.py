"""What a servable's stage costs a request: exported servables of one model, side by side.

    python bench/servable_cost.py --model_dir=M --servables=/s/plain/1,/s/feedback/1 \
        [--k=100] [--rounds=3]

Each servable is loaded as TF Serving loads it (one Session over the serve MetaGraph); the
layout's eval queries are sent one request of one query at a time through serving_default,
the servables alternating round by round so that the machine's load falls on both alike.
Prints per servable the p50 / p90 / p99 latency in ms over all rounds, the ratio of each
percentile to the first servable's, and the process CPU time per request (every thread's; a
stage whose ops run on several threads costs more CPU than latency). Used for dense feedback
(one more FAISS search per request and a gather over the item table) and the encoder list (a
pretrained encoder's forward pass and an exact search).
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def eval_queries(model_dir: str, count: int):
    """The first `count` queries of the model's layout eval split."""
    from dpsr_tf.data import eval_set as eval_set_lib
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.model.model_dir import load_model_config

    _, saved = load_model_config(model_dir)
    return eval_set_lib.load_eval_set(layout_lib.load_layout_spec(saved.layout_dir),
                                    "eval").queries[:count]


def time_alternating(callers, queries, rounds: int, cpu=None):
    """{name: [ms per call]}: callers (name -> call(query)) warmed on 20 queries, then each
    sent every query in turn, round by round, so that the machine's load falls on all alike.
    cpu: a dict that gets {name: process CPU ms per call} (every thread of this process)."""
    for call in callers.values():   # warm: first runs allocate
        for q in queries[:20]:
            call(q)
    times = {name: [] for name in callers}
    cpu_ms = {name: 0.0 for name in callers}
    for r in range(rounds):
        for name, call in callers.items():
            cpu_start = time.process_time()
            for q in queries:
                start = time.perf_counter()
                call(q)
                times[name].append((time.perf_counter() - start) * 1e3)
            cpu_ms[name] += (time.process_time() - cpu_start) * 1e3
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    if cpu is not None:
        cpu.update({name: cpu_ms[name] / len(times[name]) for name in callers})
    return times


def print_latencies(times, label: str, cpu=None) -> None:
    """p50 / p90 / p99 ms of each entry of {name: [ms]} and their ratios to the first's; with
    cpu ({name: ms}), each entry's CPU ms per call too."""
    width = max(len(label), *(len(name) for name in times))
    base = np.percentile(next(iter(times.values())), [50, 90, 99])
    print(f"{label:{width}s} {'n':>5s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s}  ratio"
          + ("   cpu ms" if cpu else ""))
    for name, t in times.items():
        p = np.percentile(t, [50, 90, 99])
        print(f"{name:{width}s} {len(t):5d} {p[0]:7.2f} {p[1]:7.2f} {p[2]:7.2f}  "
              + " / ".join(f"{x:.2f}" for x in p / base)
              + (f"  {cpu[name]:7.2f}" if cpu else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="the model (for its eval queries)")
    parser.add_argument("--servables", required=True, help="version directories, comma-separated")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300, help="eval queries per round")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tests.support.tf1_servable import Tf1Servable

    queries = eval_queries(args.model_dir, args.queries)
    callers = {}
    for path in args.servables.split(","):
        servable = Tf1Servable(path)
        callers[path] = lambda q, s=servable: s.call("serving_default",
                                                     {"query": [q], "k": args.k}, ["item_ids"])
    cpu = {}
    print_latencies(time_alternating(callers, queries, args.rounds, cpu), "servable", cpu)


if __name__ == "__main__":
    main()
