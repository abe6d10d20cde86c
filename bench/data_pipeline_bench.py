"""Input-pipeline throughput: examples/s of dpsr_tf.data.pipeline on a prepared layout.

  PYTHONPATH=. python bench/data_pipeline_bench.py --layout=LAYOUT_DIR [--batch_size=256]
      [--negatives=64] [--batches=300] [--estimator_steps=0]

Reports the time to the first batch (tables read from disk), then steady-state batches/s and
examples/s over --batches batches (median of 3 passes), iterating the dataset in eager mode and
touching every feature. Side by side: the same join done by a Python generator per example
(tf.data.Dataset.from_generator), the per-example-Python design this pipeline avoids, and the
pipeline's first design (tables as a cached one-element dataset zipped with the batches).
With --estimator_steps > 0 also the examples/s of tf.estimator training a trivial model_fn
(mean of embeddings) from this input_fn: an upper bound of any real model's training speed.
With --dpsr_train_steps > 0 also the examples/s that `dpsr train` (the DPSR model, default
ModelConfig) logs on this layout with the same batch size (median of its progress lines after
the first).
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as L
from dpsr_tf.data import pipeline


def _touch(batch):
    for v in batch.values():
        if isinstance(v, tf.RaggedTensor):
            v.flat_values.numpy()
        else:
            v.numpy()


def pipeline_rate(layout_dir, batch_size, negatives, batches):
    fn = pipeline.make_train_input_fn(layout_dir, batch_size=batch_size,
                                      num_random_negatives=negatives, seed=0)
    start = time.monotonic()
    it = iter(fn())
    _touch(next(it))
    first = time.monotonic() - start
    rates = []
    for _ in range(3):
        start = time.monotonic()
        for _ in range(batches):
            _touch(next(it))
        rates.append(batches * batch_size / (time.monotonic() - start))
    return first, statistics.median(rates)


def zipped_tables_rate(layout_dir, batch_size, negatives, batches):
    """The first design: tables as a cached one-element dataset zipped with the batches."""
    spec = L.load_layout_spec(layout_dir)
    files = [spec.path(p) for p in spec.record_files["train"]]
    records = pipeline._records(files, batch_size, True, 65536, 0, None, 1, 0)  # pylint: disable=protected-access
    tables = (tf.data.Dataset.from_tensors(np.int64(0))
              .map(pipeline._load_tables(spec, ("items", "queries", "users")))  # pylint: disable=protected-access
              .cache().repeat())
    join = pipeline._join_fn(spec, negatives, 0, batch_size)  # pylint: disable=protected-access
    ds = (tf.data.Dataset.zip((records, tables, tf.data.Dataset.counter()))
          .map(lambda raw, t, i: join(raw, i, t), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    it = iter(ds)
    _touch(next(it))
    start = time.monotonic()
    for _ in range(batches):
        _touch(next(it))
    return batches * batch_size / (time.monotonic() - start)


def python_generator_rate(layout_dir, batch_size, batches):
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
    ds = ds.ragged_batch(batch_size).prefetch(tf.data.AUTOTUNE)
    it = iter(ds)
    _touch(next(it))
    start = time.monotonic()
    for _ in range(batches):
        _touch(next(it))
    return batches * batch_size / (time.monotonic() - start)


def estimator_rate(layout_dir, batch_size, negatives, steps):
    spec = L.load_layout_spec(layout_dir)

    def model_fn(features, labels, mode, params):
        del labels, params
        emb = tf.compat.v1.get_variable("emb", [spec.token_id_space, 16])

        def bag(r):
            v = tf.nn.embedding_lookup(emb, r.flat_values)
            return tf.math.unsorted_segment_mean(v, r.value_rowids(), r.nrows())

        q = bag(features["query_tokens"])
        i = bag(features["item_tokens"])
        n = bag(features["neg_item_tokens"])
        loss = tf.reduce_mean(tf.nn.relu(0.1 + tf.matmul(q, n, transpose_b=True)
                                         - tf.reduce_sum(q * i, 1, keepdims=True)))
        train_op = tf.compat.v1.train.AdagradOptimizer(0.1).minimize(
            loss, tf.compat.v1.train.get_global_step())
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    fn = pipeline.make_train_input_fn(layout_dir, batch_size=batch_size,
                                      num_random_negatives=negatives, seed=0)
    est = tf.estimator.Estimator(model_fn, model_dir=tempfile.mkdtemp(),
                                 config=tf.estimator.RunConfig(log_step_count_steps=10**9,
                                                               save_summary_steps=10**9))
    est.train(fn, steps=20)                     # graph building, table load, warm-up
    start = time.monotonic()
    est.train(fn, steps=steps)
    return steps * batch_size / (time.monotonic() - start)


def dpsr_train_rate(layout_dir, batch_size, steps):
    model_dir = tempfile.mkdtemp()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dpsr_tf.cli", "train", f"--layout_dir={layout_dir}",
             f"--model_dir={model_dir}", f"--train_steps={steps}", f"--batch_size={batch_size}",
             f"--log_step_count_steps={max(10, steps // 8)}", "--eval_steps=1",
             f"--save_checkpoints_steps={steps * 10}"],
            cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    rates = [float(x) for x in re.findall(r"([0-9.]+) examples/s", proc.stderr + proc.stdout)]
    if proc.returncode != 0 or len(rates) < 2:
        print(f"dpsr train failed (rc {proc.returncode}): {proc.stderr[-500:]}")
        return None
    return statistics.median(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", required=True)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--python_batches", type=int, default=50)
    parser.add_argument("--zip_batches", type=int, default=50,
                        help="batches of the first (zipped tables) design; 0 = skip")
    parser.add_argument("--estimator_steps", type=int, default=0)
    parser.add_argument("--dpsr_train_steps", type=int, default=0)
    args = parser.parse_args()
    spec = L.load_layout_spec(args.layout)
    print(f"layout: {spec.num_items:,} items, {spec.num_users:,} users, "
          f"{spec.num_records['train']:,} train interactions; batch {args.batch_size}, "
          f"{args.negatives} random negatives")
    first, rate = pipeline_rate(args.layout, args.batch_size, args.negatives, args.batches)
    print(f"first batch (tables read): {first:.2f} s")
    print(f"dpsr_tf.data.pipeline: {rate:,.0f} examples/s")
    if args.zip_batches:
        zipped = zipped_tables_rate(args.layout, args.batch_size, args.negatives,
                                    args.zip_batches)
        print(f"first design, tables zipped in as a cached dataset: {zipped:,.0f} examples/s "
              f"({rate / zipped:.1f}x slower than the pipeline)")
    if args.python_batches:
        py = python_generator_rate(args.layout, args.batch_size, args.python_batches)
        print(f"per-example Python generator (no negatives, no history): {py:,.0f} "
              f"examples/s ({rate / py:.1f}x slower than the pipeline)")
    if args.estimator_steps:
        est = estimator_rate(args.layout, args.batch_size, args.negatives,
                             args.estimator_steps)
        print(f"Estimator.train, trivial bag-of-embeddings model_fn: {est:,.0f} examples/s "
              f"(pipeline {rate / est:.1f}x faster)")
    if args.dpsr_train_steps:
        dpsr = dpsr_train_rate(args.layout, args.batch_size, args.dpsr_train_steps)
        if dpsr:
            print(f"dpsr train (DPSR model, default config): {dpsr:,.0f} examples/s "
                  f"(pipeline {rate / dpsr:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
