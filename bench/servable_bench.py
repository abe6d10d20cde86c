"""In-process latency of a DPSR servable: query text -> top 1,000 item ids, and its overhead.

Side by side in one process, on one 1M-item index (seeded clustered unit-norm 64-d vectors,
IVF4096,PQ32, nprobe 64), single queries:
  - bare FAISS      the faiss-cpu wheel's index.search on precomputed query embeddings
                    (one search per query head)
  - FAISS op        Dpsr>FaissSearch on the same embeddings in a TF session
  - servable        the exported SavedModel's serving_default: Dpsr>Tokenize, query tower,
                    one Dpsr>FaissSearch per head, merge/dedupe, id map; query string in
  - hybrid          the same model exported as a hybrid servable: also Dpsr>Tokenize with the
                    lexical configuration, Dpsr>LexicalSearch (top k BM25 over 1M synthetic
                    Zipf-worded titles of the same item ids) and RRF fusion in-graph
The model is a briefly trained DPSR model on the synthetic catalog (its weights do not change
the cost); the index holds 1M synthetic vectors, not that model's items, since only the cost of
searching them matters here. Ratios are the result; absolute numbers depend on the machine.

    python bench/servable_bench.py [--num_items 1000000] [--heads 1,2] [--queries 300]
"""
import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(
        np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _zipf_titles(n, seed, vocabulary=50_000):
    """n titles of 6-14 words drawn Zipf-like from a synthetic vocabulary (w0 most common)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocabulary + 1) ** 0.9
    p /= p.sum()
    lengths = rng.integers(6, 15, n)
    words = rng.choice(vocabulary, size=int(lengths.sum()), p=p)
    ends = np.cumsum(lengths)
    return [" ".join(f"w{w}" for w in words[e - l:e]) for e, l in zip(ends, lengths)]


def _train_model(work, heads, steps):
    from dpsr_tf.demo import synthetic_catalog as synthetic
    from dpsr_tf.data.layout import LAYOUT_JSON
    from dpsr_tf.data.prepare import PrepareConfig, prepare
    from dpsr_tf.model.config import ModelConfig
    from dpsr_tf.training import driver
    from dpsr_tf.training.config import TrainConfig

    layout = os.path.join(work, "layout")
    if not os.path.exists(os.path.join(layout, LAYOUT_JSON)):
        gen = synthetic.generate(synthetic.SyntheticConfig(num_items=2000, num_users=200,
                                                           num_interactions=20000),
                                 os.path.join(work, "catalog"), log=lambda _: None)
        prepare(PrepareConfig(items=gen.items_path, users=gen.users_path,
                              interactions=gen.interactions_path, output=layout),
                log=lambda _: None)
    model_dir = os.path.join(work, f"model_h{heads}")
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(
        ModelConfig(num_heads=heads, embedding_dim=64),
        TrainConfig(layout_dir=layout, model_dir=model_dir, batch_size=64, train_steps=steps,
                    save_checkpoints_steps=steps, eval_steps=1))
    return model_dir


def _percentiles(ms):
    ms = np.asarray(ms)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_items", type=int, default=1_000_000)
    parser.add_argument("--factory", default="IVF4096,PQ32")
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--heads", default="1,2")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--train_steps", type=int, default=50)
    parser.add_argument("--work_dir", default="/tmp/dpsr_servable_bench")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import faiss
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    from absl import logging
    logging.set_verbosity(logging.ERROR)

    from dpsr_tf import op_library
    from dpsr_tf.search import faiss_ops
    from dpsr_tf.indexing import index_builder, index_layout, lexical_index
    from dpsr_tf.export.saved_model_export import export_servable
    from dpsr_tf.export.servable_graph import ServableConfig

    os.makedirs(args.work_dir, exist_ok=True)
    index_dir = os.path.join(args.work_dir, f"index_{args.num_items}_{args.factory}")
    if not os.path.exists(os.path.join(index_dir, "manifest.json")):
        _log(f"building {args.factory} over {args.num_items} vectors")
        emb = _clustered(args.num_items, 64, 1000, seed=0)
        ids = [f"I{i:07d}" for i in range(args.num_items)]
        index_builder.build_index(emb, ids, index_dir, index_builder.IndexBuildConfig(
            factory=args.factory, nprobe=args.nprobe), overwrite=True)
        del emb
    manifest = index_layout.read_manifest(index_dir)
    if manifest.lexical is None:
        _log(f"building the lexical index of {args.num_items} synthetic titles")
        ids = [f"I{i:07d}" for i in range(args.num_items)]
        lexical = lexical_index.build_lexical_shards(
            index_dir, manifest, ids, _zipf_titles(args.num_items, seed=1), log=_log)
        manifest = dataclasses.replace(manifest, lexical=lexical)
        index_layout.write_manifest(index_dir, manifest)
    index_file, _ = manifest.shard_paths(index_dir, 0)
    wheel_index = faiss.read_index(index_file)
    faiss.ParameterSpace().set_index_parameter(wheel_index, "nprobe", args.nprobe)
    faiss.omp_set_num_threads(1)  # single queries: the op's core also searches on one thread

    # Real words for the model's tokenizer plus two catalog words (one common, one rarer) so
    # the lexical side does the work of a matching query.
    rng = np.random.default_rng(2)
    queries = [f"query {i} {w} w{rng.integers(0, 200)} w{rng.integers(200, 20000)}"
               for i, w in enumerate(["apple phone", "running shoes", "小米 手机",
                                      "wireless mouse", "red dress"] *
                                     (args.queries // 5 + 1))][:args.queries]
    rows = []
    op_library.load()
    for heads in [int(h) for h in args.heads.split(",")]:
        _log(f"training a {heads}-head model ({args.train_steps} steps) and exporting")
        model_dir = _train_model(args.work_dir, heads, args.train_steps)
        timings = {}
        for hybrid in (False, True):
            base = os.path.join(args.work_dir, f"servable_h{heads}{'_hybrid' if hybrid else ''}")
            shutil.rmtree(base, ignore_errors=True)
            version_dir = export_servable(model_dir, index_dir, base, servable=ServableConfig(
                default_k=args.k, max_k=max(args.k, 1000), nprobe=args.nprobe, hybrid=hybrid))
            with tf.compat.v1.Session(graph=tf.Graph()) as sess:
                meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
                sig = meta.signature_def["serving_default"]
                q_in = sig.inputs["query"].name
                fetch = [sig.outputs[k].name for k in ("item_ids", "scores", "heads")]
                emb_sig = meta.signature_def["query_embedding"]
                q_emb = sess.run(emb_sig.outputs["embedding"].name,
                                 {emb_sig.inputs["query"].name: queries})   # [Q, m, 64]
                for q in queries[:20]:
                    sess.run(fetch, {q_in: [q]})                             # warm-up
                ms = []
                for q in queries:
                    t = time.perf_counter()
                    sess.run(fetch, {q_in: [q]})
                    ms.append((time.perf_counter() - t) * 1e3)
                timings[hybrid] = ms
        servable_ms, hybrid_ms = timings[False], timings[True]
        bare_ms = []
        for row in q_emb:
            t = time.perf_counter()
            for h in range(heads):
                wheel_index.search(row[h:h + 1], args.k)
            bare_ms.append((time.perf_counter() - t) * 1e3)
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            index = faiss_ops.FaissIndex(index_file)
            ph = tf.compat.v1.placeholder(tf.float32, [None, 64])
            out = faiss_ops.search(index, ph, args.k, nprobe=args.nprobe)
            sess.run(tf.compat.v1.tables_initializer())
            op_ms = []
            for row in q_emb:
                t = time.perf_counter()
                for h in range(heads):
                    sess.run(out, {ph: row[h:h + 1]})
                op_ms.append((time.perf_counter() - t) * 1e3)
        rows.append({"heads": heads, "bare": _percentiles(bare_ms), "op": _percentiles(op_ms),
                     "servable": _percentiles(servable_ms), "hybrid": _percentiles(hybrid_ms)})

    print(f"# servable latency, single queries, top {args.k} of {args.num_items:,} items, "
          f"{args.factory} nprobe {args.nprobe}; {platform.node()} {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| heads | bare FAISS p50 / p99 ms | Dpsr>FaissSearch op p50 / p99 ms | "
          "servable (text in) p50 / p99 ms | hybrid servable p50 / p99 ms | servable / bare "
          "(p50) | hybrid / servable (p50) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b, o, s, h = r["bare"], r["op"], r["servable"], r["hybrid"]
        print(f"| {r['heads']} | {b['p50']:.2f} / {b['p99']:.2f} | {o['p50']:.2f} / "
              f"{o['p99']:.2f} | {s['p50']:.2f} / {s['p99']:.2f} | {h['p50']:.2f} / "
              f"{h['p99']:.2f} | {s['p50'] / b['p50']:.2f}x | {h['p50'] / s['p50']:.2f}x |")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
