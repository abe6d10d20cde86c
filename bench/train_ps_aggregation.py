"""Bytes between worker and parameter servers per training step, with and without §5.1.3
embedding aggregation on the parameter servers, on real Home Depot batches.

A real in-process cluster (1 worker + P parameter servers, gRPC on loopback) runs the DPSR
training step built by dpsr_model_fn under the replica device setter that `dpsr train` uses.
Bytes per step are counted from the placed graph (dpsr_tf/training/traffic.py): every tensor
that crosses between tasks is sized on its producer in the same step, so the count is the exact
payload the runtime ships (gRPC framing excluded). The loopback interface counter (psutil, all
processes of the machine) is printed beside it as a rough cross-check.

    python bench/train_ps_aggregation.py [--layout_dir L] [--ps 2] [--steps 30] [--heads 1]

Without --layout_dir the Home Depot layout is prepared from ../shared/datasets into a temp dir.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402

from dpsr_tf.data import pipeline  # noqa: E402
from dpsr_tf.data.layout import load_layout_spec  # noqa: E402
from dpsr_tf.model.config import ModelConfig  # noqa: E402
from dpsr_tf.model.model_fn import dpsr_model_fn  # noqa: E402
from dpsr_tf.training import tf_config, traffic  # noqa: E402
from dpsr_tf.training.run_config import GreedyByteSizeStrategy  # noqa: E402

HOME_DEPOT = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "home_depot")


def home_depot_layout(work: str) -> str:
    from dpsr_tf.data.converters import home_depot  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data.prepare import PrepareConfig, prepare  # pylint: disable=import-outside-toplevel
    files = home_depot.convert(HOME_DEPOT, os.path.join(work, "tsv"))
    out = os.path.join(work, "layout")
    prepare(PrepareConfig(items=files.items_path, interactions=files.interactions_path,
                          output=out, eval_min_gain=1.67), log=lambda _: None)
    return out


def category(t: tf.Tensor) -> str:
    return "token bags" if "_bag" in t.name else "dense layers, other"


def run_mode(layout_dir, spec, cfg, args):
    """(bytes per step by direction/category, steps/s, loopback bytes per step)."""
    cluster = tf_config.loopback_cluster(num_workers=0, num_ps=args.ps)
    cluster = {"worker": cluster["chief"], "ps": cluster["ps"]}
    servers = [tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job,
                                    task_index=i, start=True)
               for job in ("worker", "ps") for i in range(len(cluster[job]))]
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        with tf.device("/job:worker/task:0/cpu:0"):
            ds = pipeline.make_train_input_fn(
                layout_dir, batch_size=args.batch, num_random_negatives=max(
                    1, cfg.random_negatives_needed), seed=0)()
            features = tf.compat.v1.data.make_one_shot_iterator(ds).get_next()
        setter = tf.compat.v1.train.replica_device_setter(
            ps_tasks=args.ps, worker_device="/job:worker/task:0", merge_devices=True,
            cluster=cluster, ps_strategy=GreedyByteSizeStrategy(args.ps))
        with tf.compat.v1.device(setter):
            est = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                                {"model_config": cfg, "layout_spec": spec, "seed": 0,
                                 "batch_size": args.batch})
        crossing = traffic.crossing_tensors([est.train_op, est.loss], graph, ("worker", 0))
        sizes = traffic.traffic_ops(crossing, category)
        init = tf.compat.v1.global_variables_initializer()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2,
                                      inter_op_parallelism_threads=2)
    with tf.compat.v1.Session(servers[0].target, graph=graph, config=config) as sess:
        sess.run(init)
        for _ in range(3):
            sess.run(est.train_op)
        totals = {k: 0 for k in sizes}
        for _ in range(args.steps):
            _, got = sess.run([est.train_op, sizes])
            for k, v in got.items():
                totals[k] += int(v)
        per_step = {k: v / args.steps for k, v in totals.items()}
        lo_before = psutil.net_io_counters(pernic=True)["lo"].bytes_sent
        start = time.perf_counter()
        for _ in range(args.steps):
            sess.run(est.train_op)
        elapsed = time.perf_counter() - start
        lo_bytes = psutil.net_io_counters(pernic=True)["lo"].bytes_sent - lo_before
    del servers
    return per_step, args.steps / elapsed, lo_bytes / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout_dir")
    parser.add_argument("--ps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        layout_dir = args.layout_dir or home_depot_layout(work)
        spec = load_layout_spec(layout_dir)
        results = {}
        for aggregate in (False, True):
            cfg = ModelConfig(num_heads=args.heads, embedding_partitions=args.ps,
                              aggregate_on_ps=aggregate)
            results[aggregate] = run_mode(layout_dir, spec, cfg, args)
    keys = sorted(set(results[False][0]) | set(results[True][0]))
    print(f"\n{spec.num_items} items, token table {spec.token_id_space} x 64 in {args.ps} "
          f"partitions on {args.ps} ps, batch {args.batch} (+32 random negatives), "
          f"{args.heads} head(s); {args.steps} steps; {platform.node()}, "
          f"{os.cpu_count()} cores, TF {tf.__version__}\n")
    print("| bytes per step | plain lookup | aggregated on ps | ratio |")
    print("|---|---:|---:|---:|")
    for key in keys:
        a, b = results[False][0].get(key, 0), results[True][0].get(key, 0)
        print(f"| {key} | {a:,.0f} | {b:,.0f} | {a / b if b else float('inf'):.1f}x |")
    total = [sum(v for k, v in results[m][0].items() if ":" not in k) for m in (False, True)]
    print(f"| **total worker<->ps** | {total[0]:,.0f} | {total[1]:,.0f} | "
          f"{total[0] / total[1]:.1f}x |")
    print(f"| loopback counter (all processes) | {results[False][2]:,.0f} | "
          f"{results[True][2]:,.0f} | {results[False][2] / max(results[True][2], 1):.1f}x |")
    print(f"| steps/s | {results[False][1]:.1f} | {results[True][1]:.1f} | "
          f"{results[True][1] / results[False][1]:.2f}x |")
    np.set_printoptions(suppress=True)


if __name__ == "__main__":
    main()
