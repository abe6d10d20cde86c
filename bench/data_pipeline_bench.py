"""Input-pipeline throughput: examples/s of dpsr_tf.data.pipeline on a prepared layout.

  PYTHONPATH=. python bench/data_pipeline_bench.py --layout=LAYOUT_DIR [--batch_size=256]
      [--negatives=64] [--batches=200] [--rounds=3] [--dpsr_train_steps=0]

Two numbers per variant: examples per wall-clock second and examples per CPU-second of this
process (all its threads). On a shared, loaded machine wall-clock rates swing with the load;
CPU-seconds measure what the pipeline costs and compare stably. Variants, measured in
alternating rounds (median of --rounds):
  pipeline   dpsr_tf.data.pipeline.make_train_input_fn (shuffled, all features touched)
  zipped     the pipeline's first design: the tables as a cached one-element dataset zipped
             with the record batches (same join function)
  generator  the same join by a Python generator per example (tf.data.Dataset.from_generator;
             no negatives, no history): the per-example-Python design the pipeline avoids
With --dpsr_train_steps=N, `dpsr train` (the DPSR model, default ModelConfig, same batch size) is
run twice, for N/5 and N steps, and the difference gives its training examples/s (wall and CPU)
without start-up, graph building and evaluation.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as L
from dpsr_tf.data import pipeline, table_join


def _touch(batch):
    for v in batch.values():
        if isinstance(v, tf.RaggedTensor):
            v.flat_values.numpy()
        else:
            v.numpy()


def _rates(it, batches, batch_size):
    """(examples per wall second, examples per CPU second) over `batches` batches."""
    wall, cpu = time.monotonic(), time.process_time()
    for _ in range(batches):
        _touch(next(it))
    n = batches * batch_size
    return n / (time.monotonic() - wall), n / (time.process_time() - cpu)


def pipeline_iter(layout_dir, batch_size, negatives):
    fn = pipeline.make_train_input_fn(layout_dir, batch_size=batch_size,
                                      num_random_negatives=negatives, seed=0)
    start = time.monotonic()
    it = iter(fn())
    _touch(next(it))
    return it, time.monotonic() - start


def zipped_iter(layout_dir, batch_size, negatives):
    """The first design: tables as a cached one-element dataset zipped with the batches."""
    spec = L.load_layout_spec(layout_dir)
    files = [spec.path(p) for p in spec.record_files["train"]]
    records = pipeline._record_stream(files, 65536, 0, None, 1, 0).batch(  # pylint: disable=protected-access
        batch_size, drop_remainder=True)
    tables = (tf.data.Dataset.from_tensors(np.int64(0))
              .map(table_join.table_loader(spec, ("items", "queries", "users")))
              .cache().repeat())
    join = table_join.record_join(spec, negatives, 0, batch_size)
    ds = (tf.data.Dataset.zip((records, tables, tf.data.Dataset.counter()))
          .map(lambda raw, t, i: join(raw, i, t), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    it = iter(ds)
    _touch(next(it))
    return it


def generator_iter(layout_dir, batch_size):
    """The same features joined per example in Python (what the pipeline avoids)."""
    spec = L.load_layout_spec(layout_dir)
    items = L.load_item_table(spec)
    users = L.load_user_table(spec)
    q_ids, q_splits = L.load_query_tokens(spec)
    records = L.read_records(spec, "train")

    def gen():
        for r in records:
            q, i, u = int(r["query_row"]), int(r["item_row"]), int(r["user_row"])
            out = {"query_tokens": q_ids[q_splits[q]:q_splits[q + 1]].astype(np.int64),
                   "item_tokens": items.tokens(i), "label": np.float32(r["label_kind"] != 2)}
            for j, name in enumerate(spec.item_features):
                out[f"item_{name}"] = np.int64(items.features[i, j])
            for j, name in enumerate(spec.user_features):
                out[f"user_{name}"] = np.int64(users.features[u, j] if u >= 0 else 0)
            yield out

    sig = {"query_tokens": tf.TensorSpec([None], tf.int64),
           "item_tokens": tf.TensorSpec([None], tf.int64), "label": tf.TensorSpec([], tf.float32)}
    sig.update({f"item_{n}": tf.TensorSpec([], tf.int64) for n in spec.item_features})
    sig.update({f"user_{n}": tf.TensorSpec([], tf.int64) for n in spec.user_features})
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).repeat()
    it = iter(ds.ragged_batch(batch_size).prefetch(tf.data.AUTOTUNE))
    _touch(next(it))
    return it


def _dpsr_train(layout_dir, batch_size, steps):
    """(wall seconds, child CPU seconds) of one `dpsr train` run."""
    model_dir = tempfile.mkdtemp()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dpsr_tf.cli", "train", f"--layout_dir={layout_dir}",
             f"--model_dir={model_dir}", f"--train_steps={steps}", f"--batch_size={batch_size}",
             "--log_step_count_steps=1000000", "--eval_steps=1",
             f"--save_checkpoints_steps={steps * 10}", "--throttle_secs=100000"],
            cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    wall = time.monotonic() - wall
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"dpsr train failed: {proc.stderr[-800:]}")
    return wall, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def dpsr_train_rates(layout_dir, batch_size, steps):
    short = max(20, steps // 5)
    w1, c1 = _dpsr_train(layout_dir, batch_size, short)
    w2, c2 = _dpsr_train(layout_dir, batch_size, steps)
    n = (steps - short) * batch_size
    return n / max(w2 - w1, 1e-9), n / max(c2 - c1, 1e-9)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", required=True)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generator_batches", type=int, default=20)
    parser.add_argument("--dpsr_train_steps", type=int, default=0)
    args = parser.parse_args()
    spec = L.load_layout_spec(args.layout)
    print(f"layout: {spec.num_items:,} items, {spec.num_users:,} users, "
          f"{spec.num_records['train']:,} train interactions; batch {args.batch_size}, "
          f"{args.negatives} random negatives")
    it, first = pipeline_iter(args.layout, args.batch_size, args.negatives)
    print(f"pipeline: input_fn() to first batch (tables read) {first:.2f} s")
    zipped = zipped_iter(args.layout, args.batch_size, args.negatives)
    results = {"pipeline": [], "zipped": []}
    for _ in range(args.rounds):
        results["pipeline"].append(_rates(it, args.batches, args.batch_size))
        results["zipped"].append(_rates(zipped, max(1, args.batches // 4), args.batch_size))
    if args.generator_batches:
        gen = generator_iter(args.layout, args.batch_size)
        results["generator"] = [_rates(gen, args.generator_batches, args.batch_size)]
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for k, v in results.items()}
    if args.dpsr_train_steps:
        try:
            med["dpsr train"] = dpsr_train_rates(args.layout, args.batch_size,
                                                 args.dpsr_train_steps)
        except RuntimeError as e:
            print(e)
    base_wall, base_cpu = med["pipeline"]
    print("| variant | examples/s (wall) | examples per CPU-second | pipeline / variant (CPU) |")
    print("|---|---:|---:|---:|")
    for name, (wall, cpu) in med.items():
        print(f"| {name} | {wall:,.0f} | {cpu:,.0f} | {base_cpu / cpu:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
