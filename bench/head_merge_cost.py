"""CPU per query of the servable's merge of the heads' lists (dpsr_tf/search/head_merge.py
merge_heads), in one TF1 session as the servable runs it, beside an Identity of the same feeds
(what any session.run costs): single queries, m heads of n = k hits, labels drawn from 1M items
with a share of them found by two heads, one intra-op thread.

    PYTHONPATH=. python bench/head_merge_cost.py [--heads 1,2,4] [--k 1000] [--runs 2000]

Run it in two checkouts side by side to compare two implementations of merge_heads; CPU time
(not wall time) depends little on other load, but alternate the runs on a busy machine.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf  # noqa: E402

from dpsr_tf.search.head_merge import merge_heads  # noqa: E402


def lists(m: int, n: int, seed: int = 0):
    """[1, m, n] scores sorted per head (as FAISS returns them) and labels, a third of head 0's
    labels found again by the other heads."""
    rng = np.random.default_rng(seed)
    scores = -np.sort(-rng.standard_normal((1, m, n)).astype(np.float32), axis=2)
    labels = rng.integers(0, 1_000_000, size=(1, m, n)).astype(np.int64)
    for h in range(1, m):
        shared = rng.choice(n, n // 3, replace=False)
        labels[0, h, shared] = labels[0, 0, rng.permutation(n)[: n // 3]]
    return scores, labels


def cpu_per_run(session, fetch, feed, runs: int) -> float:
    for _ in range(min(200, runs)):
        session.run(fetch, feed)
    start = time.process_time()
    for _ in range(runs):
        session.run(fetch, feed)
    return (time.process_time() - start) / runs * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="1,2,4")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                      inter_op_parallelism_threads=1)
    print("| heads | merge ms CPU / query | Identity ms | merge above Identity |")
    print("|---:|---:|---:|---:|")
    for m in (int(h) for h in args.heads.split(",")):
        with tf.Graph().as_default():
            scores = tf.compat.v1.placeholder(tf.float32, [None, m, args.k])
            labels = tf.compat.v1.placeholder(tf.int64, [None, m, args.k])
            merged = merge_heads(scores, labels, args.k)
            floor = [tf.identity(scores), tf.identity(labels)]
            s, l = lists(m, args.k)
            feed = {scores: s, labels: l}
            with tf.compat.v1.Session(config=config) as session:
                merge_ms = cpu_per_run(session, merged, feed, args.runs)
                floor_ms = cpu_per_run(session, floor, feed, args.runs)
        print(f"| {m} | {merge_ms:.3f} | {floor_ms:.3f} | {merge_ms - floor_ms:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
