"""FAISS indexing and search: build time, peak memory, latency, recall@k, TF op vs bare faiss.

Synthetic catalog: N clustered unit-norm d-dim item embeddings (seeded; C Gaussian centres,
items and queries = centre + noise, L2-normalized), queries drawn the same way. For each index
type:
  build   export.index_builder.build_index in a child process (wall seconds, peak RSS of the
          child, RSS before the build = the embeddings and ids it holds)
  search  in ONE process, side by side on the same index file and the same queries:
            op     Dpsr>FaissSearch in a tf.function (export/faiss_ops.py; FAISS 1.7.3 from
                   Debian's libfaiss.a, generic x86-64 SIMD)
            wheel  faiss-cpu 1.7.3 index.search (the wheel picks its AVX2 build here)
          single query: median / p99 over --latency_queries queries, one at a time
          batched: --batch queries per call, ms per call and per query
          recall@k of the op against exact search (numpy, chunked over the memmap)
  overhead  the op on a 1-vector index (k=1): the fixed cost TF adds per call
A second child measures the wheel's generic (non-AVX2) build (FAISS_DISABLE_CPU_FEATURES=AVX2)
on the same files, the SIMD level of the op's FAISS, to split the op/wheel gap into TF overhead
and SIMD.

    nice -n 10 python bench/faiss_bench.py --num_items 1000000 --work_dir /tmp/faiss_bench \\
        --indexes flat,ivfpq,ivfpq_fs32,ivfpq_fs64,hnsw --json bench/results/faiss_1m.json

Prints Markdown tables (docs/benchmarks.md, section "FAISS indexing and search").
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

# Idle OpenMP threads sleep instead of spinning: the op (system libgomp) and the wheel (its own
# libgomp) share 2 cores here, and one runtime's spinning threads would slow the other's calls.
# Set before either library loads; the same for both sides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name -> (factory, knob swept at search time, values; 0 = the stored default)
INDEXES = {
    "flat": ("Flat", None, [0]),
    "ivfpq": ("IVF4096,PQ32", "nprobe", [16, 32, 64, 128]),
    "ivfpq_fs32": ("IVF4096,PQ32x4fs", "nprobe", [16, 64, 128]),
    "ivfpq_fs64": ("IVF4096,PQ64x4fs", "nprobe", [16, 64, 128]),
    "hnsw": ("HNSW32", "ef_search", [1000, 2000]),
}


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status(field):
    """A /proc/self/status memory field in bytes (VmRSS: now, VmHWM: peak since exec; unlike
    getrusage's ru_maxrss, VmHWM does not inherit the parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rss():
    return _status("VmRSS")


# ------------------------------------------------------------------------------- data

def _generate(path, n, d, clusters, seed, noise, chunk=1 << 20):
    """Writes n clustered unit vectors to path (.npy); chunk c uses seed (seed, c)."""
    centres = np.random.default_rng([seed, 10**9]).standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=(n, d))
    for c, lo in enumerate(range(0, n, chunk)):
        hi = min(n, lo + chunk)
        rng = np.random.default_rng([seed, c])
        x = centres[rng.integers(0, clusters, hi - lo)] + \
            noise / np.sqrt(d) * rng.standard_normal((hi - lo, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    out.flush()
    del out
    os.replace(path + ".tmp", path)


def _data(args):
    os.makedirs(args.work_dir, exist_ok=True)
    tag = f"{args.num_items}_{args.dim}_{args.clusters}_{args.noise}_{args.seed}"
    items_path = os.path.join(args.work_dir, f"items_{tag}.npy")
    queries_path = os.path.join(args.work_dir, f"queries_{tag}_{args.num_queries}.npy")
    if not os.path.exists(items_path):
        t0 = time.monotonic()
        _generate(items_path, args.num_items, args.dim, args.clusters, args.seed, args.noise)
        _log(f"generated {items_path} in {time.monotonic() - t0:.1f} s")
    if not os.path.exists(queries_path):
        # Queries come from the same mixture, with other seeds than any item chunk.
        _generate(queries_path, args.num_queries, args.dim, args.clusters, args.seed + 7919,
                  args.noise)
    return items_path, queries_path, tag


def _exact(args, items_path, queries, tag):
    """Exact top-k labels [Q, k] (numpy, chunked over the memmap; cached)."""
    path = os.path.join(args.work_dir, f"exact_{tag}_{len(queries)}_{args.k}.npy")
    if os.path.exists(path):
        return np.load(path)
    items = np.load(items_path, mmap_mode="r")
    t0 = time.monotonic()
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(items), 1 << 17):  # bounded memory: [Q, 131072] at a time
        chunk = np.asarray(items[lo:lo + (1 << 17)])
        s = queries @ chunk.T
        top = np.argpartition(-s, min(args.k, s.shape[1] - 1), axis=1)[:, :args.k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + lo], 1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :args.k]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    np.save(path, best_i)
    _log(f"exact top-{args.k} of {len(queries)} queries in {time.monotonic() - t0:.1f} s")
    return best_i


# ------------------------------------------------------------------------------- build

def _build_one(args):
    """Child process: builds one index with export.index_builder; prints a JSON line."""
    from export import index_builder  # pylint: disable=g-import-not-at-top
    factory = _factory(args.build_one, args.nlist)
    items = np.load(args.items_path, mmap_mode="r")
    items = np.ascontiguousarray(items)  # in memory, as a `dpsr index` run holds them
    ids = [f"item-{i}" for i in range(len(items))]
    before = _rss()
    out_dir = os.path.join(args.work_dir, f"index_{args.tag}_{args.build_one}_{args.nlist}")
    config = index_builder.IndexBuildConfig(
        factory=factory, nprobe=64, ef_search=16, train_size=args.train_size, seed=args.seed,
        add_batch_size=65536)
    t0 = time.monotonic()
    manifest = index_builder.build_index(items, ids, out_dir, config, overwrite=True)
    seconds = time.monotonic() - t0
    print(json.dumps({
        "name": args.build_one, "factory": factory, "build_seconds": seconds,
        "train_size": manifest.train_size, "index_bytes": manifest.shards[0].index_bytes,
        "rss_before_build": before,
        "peak_rss": _status("VmHWM"),
        "index_file": manifest.shard_paths(out_dir, 0)[0]}))


def _factory(name, nlist):
    return INDEXES[name][0].replace("IVF4096", f"IVF{nlist}")


def _build(args, name, items_path, tag):
    marker = os.path.join(args.work_dir, f"built_{tag}_{name}_{args.nlist}.json")
    if os.path.exists(marker) and not args.rebuild:
        with open(marker) as f:
            return json.load(f)
    _log(f"building {name} ({_factory(name, args.nlist)}) on {args.num_items} items")
    cmd = [sys.executable, os.path.abspath(__file__), "--build_one", name, "--items_path",
           items_path, "--tag", tag, "--work_dir", args.work_dir, "--seed", str(args.seed),
           "--train_size", str(args.train_size), "--nlist", str(args.nlist)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"build of {name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(marker, "w") as f:
        json.dump(result, f)
    _log(f"built {name}: {result['build_seconds']:.1f} s, peak RSS "
         f"{result['peak_rss'] / 2**30:.2f} GiB")
    return result


# ------------------------------------------------------------------------------- search

def _timings(fn, queries, n):
    out = []
    for i in range(n):
        q = queries[i % len(queries)][None]
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def _summary(ms):
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(np.mean(ms))}


def _set_knob(index, knob, value):
    import faiss  # pylint: disable=g-import-not-at-top
    if knob == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    elif knob == "ef_search":
        faiss.downcast_index(index).hnsw.efSearch = value


def _measure_search(args, built, queries, exact, wheel_only=False):
    """Op and wheel side by side on one index file: per knob value, latency and recall."""
    import faiss  # pylint: disable=g-import-not-at-top
    name = built["name"]
    _, knob, values = INDEXES[name]
    k = args.k
    wheel = faiss.read_index(built["index_file"])
    rows = []
    if not wheel_only:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        from export import faiss_ops  # pylint: disable=g-import-not-at-top
        index = faiss_ops.FaissIndex(built["index_file"])

        @tf.function(input_signature=[tf.TensorSpec([None, args.dim], tf.float32),
                                      tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
        def op_search(q, nprobe, ef):
            return faiss_ops.search(index, q, k, nprobe=nprobe, ef_search=ef)

    latency_n = args.latency_queries if name != "flat" else max(50, args.latency_queries // 4)
    for value in values:
        row = {"name": name, "factory": built["factory"], "knob": knob, "value": value}
        if knob:
            _set_knob(wheel, knob, value)
        wheel_fn = lambda q: wheel.search(q, k)  # noqa: E731
        wheel_fn(queries[:2])
        if not wheel_only:
            nprobe = tf.constant(value if knob == "nprobe" else 0)
            ef = tf.constant(value if knob == "ef_search" else 0)
            op_fn = lambda q: op_search(q, nprobe, ef)[1].numpy()  # noqa: E731
            op_fn(queries[:2])
            # Alternate op and wheel query by query, so that machine noise hits both alike.
            op_ms, wheel_ms = [], []
            for i in range(latency_n):
                q = queries[i % len(queries)][None]
                op_ms.append(_timings(op_fn, q, 1))
                wheel_ms.append(_timings(wheel_fn, q, 1))
            op_ms, wheel_ms = np.concatenate(op_ms), np.concatenate(wheel_ms)
            row["op_single"] = _summary(op_ms)
            row["wheel_single"] = _summary(wheel_ms)
            row["op_minus_wheel_median_ms"] = float(np.median(op_ms - wheel_ms))
            b = queries[:args.batch]
            row["op_batch_ms"] = float(np.median(
                [_timings(lambda _: op_fn(b), b, 1)[0] for _ in range(3)]))
            row["wheel_batch_ms"] = float(np.median(
                [_timings(lambda _: wheel_fn(b), b, 1)[0] for _ in range(3)]))
            found = np.concatenate([op_fn(queries[lo:lo + 256])
                                    for lo in range(0, len(queries), 256)])
            row["op_recall"] = float(np.mean(
                [len(set(f) & set(e)) / k for f, e in zip(found, exact)]))
            wfound = wheel.search(queries, k)[1]
            row["wheel_recall"] = float(np.mean(
                [len(set(f) & set(e)) / k for f, e in zip(wfound, exact)]))
        else:
            row["wheel_single"] = _summary(np.concatenate(
                [_timings(wheel_fn, queries, latency_n)]))
            b = queries[:args.batch]
            row["wheel_batch_ms"] = float(np.median(
                [_timings(lambda _: wheel_fn(b), b, 1)[0] for _ in range(3)]))
        rows.append(row)
        _log(json.dumps(row))
    return rows


def _op_overhead(args):
    """Per-call cost of the op on a 1-vector index (k=1), next to the wheel's."""
    import faiss  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from export import faiss_ops  # pylint: disable=g-import-not-at-top
    path = os.path.join(args.work_dir, "one_vector.faiss")
    tiny = faiss.IndexFlatIP(args.dim)
    tiny.add(np.ones((1, args.dim), np.float32))
    faiss.write_index(tiny, path)
    index = faiss_ops.FaissIndex(path)

    @tf.function(input_signature=[tf.TensorSpec([None, args.dim], tf.float32)])
    def op_search(q):
        return faiss_ops.search(index, q, 1)

    @tf.function(input_signature=[tf.TensorSpec([None, args.dim], tf.float32)])
    def identity(q):
        return tf.identity(q)

    q = np.ones((1, args.dim), np.float32)
    op_search(q)
    identity(q)
    op_ms, wheel_ms, identity_ms = [], [], []
    for _ in range(10):  # interleaved blocks
        op_ms.append(_timings(lambda x: op_search(x)[1].numpy(), q, 200))
        wheel_ms.append(_timings(lambda x: tiny.search(x, 1), q, 200))
        identity_ms.append(_timings(lambda x: identity(x).numpy(), q, 200))
    result = {"op": _summary(np.concatenate(op_ms)), "wheel": _summary(np.concatenate(wheel_ms)),
              "tf_function_identity": _summary(np.concatenate(identity_ms))}
    with tf.Graph().as_default():  # the TF1 Session path (what a model server runs)
        graph_index = faiss_ops.FaissIndex(path)
        placeholder = tf.compat.v1.placeholder(tf.float32, [None, args.dim])
        labels = faiss_ops.search(graph_index, placeholder, 1)[1]
        ident = tf.identity(placeholder)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.tables_initializer())
            run_op, run_ident = [], []
            for _ in range(10):
                run_op.append(_timings(lambda x: sess.run(labels, {placeholder: x}), q, 200))
                run_ident.append(_timings(lambda x: sess.run(ident, {placeholder: x}), q, 200))
    result["session_op"] = _summary(np.concatenate(run_op))
    result["session_identity"] = _summary(np.concatenate(run_ident))
    return result


def _wheel_generic(args, built_all, queries_path, exact_path):
    """The wheel's generic (SSE) build in a child process, single-query latency only."""
    env = dict(os.environ, FAISS_DISABLE_CPU_FEATURES="AVX2")
    cmd = [sys.executable, os.path.abspath(__file__), "--wheel_generic_child",
           json.dumps(built_all), "--queries_path", queries_path, "--exact_path", exact_path,
           "--k", str(args.k), "--dim", str(args.dim), "--latency_queries",
           str(args.latency_queries), "--batch", str(args.batch), "--work_dir", args.work_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        _log(f"wheel generic child failed: {proc.stderr[-2000:]}")
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _wheel_generic_child(args):
    import faiss  # pylint: disable=g-import-not-at-top
    assert "faiss.swigfaiss_avx2" not in sys.modules, "the wheel's generic build did not load"
    queries = np.load(args.queries_path)
    exact = np.load(args.exact_path)
    rows = []
    for built in json.loads(args.wheel_generic_child):
        rows.extend(_measure_search(args, built, queries, exact, wheel_only=True))
    print(json.dumps(rows))


# ------------------------------------------------------------------------------- report

def _report(result):
    n = result["num_items"]
    lines = [f"\n### {n:,} items, d={result['dim']}, k={result['k']} "
             f"({result['machine']}, {result['date']})\n",
             "| index | factory | build s | peak RSS GiB (before build) | index MiB |",
             "|---|---|---:|---:|---:|"]
    for b in result["builds"]:
        lines.append(f"| {b['name']} | `{b['factory']}` | {b['build_seconds']:.1f} | "
                     f"{b['peak_rss'] / 2**30:.2f} ({b['rss_before_build'] / 2**30:.2f}) | "
                     f"{b['index_bytes'] / 2**20:.0f} |")
    generic = {(r["name"], r["value"]): r for r in result.get("wheel_generic", [])}
    lines += ["", "| index | knob | recall@k op (wheel) | single query ms: op / wheel AVX2 / "
              "wheel generic (median, p99 op) | op/wheel | batch of "
              f"{result['batch']}: op / wheel ms per query |",
              "|---|---|---:|---:|---:|---:|"]
    for r in result["search"]:
        g = generic.get((r["name"], r["value"]))
        g_ms = f"{g['wheel_single']['median_ms']:.2f}" if g else "-"
        knob = f"{r['knob']}={r['value']}" if r["knob"] else "-"
        lines.append(
            f"| {r['name']} | {knob} | {r['op_recall']:.3f} ({r['wheel_recall']:.3f}) | "
            f"{r['op_single']['median_ms']:.2f} / {r['wheel_single']['median_ms']:.2f} / {g_ms}"
            f" (p99 {r['op_single']['p99_ms']:.2f}) | "
            f"{r['op_single']['median_ms'] / r['wheel_single']['median_ms']:.2f}x | "
            f"{r['op_batch_ms'] / result['batch']:.3f} / "
            f"{r['wheel_batch_ms'] / result['batch']:.3f} |")
    if "overhead" in result:
        o = result["overhead"]
        lines += ["", f"Fixed cost per call (1-vector index, k=1): op in a tf.function "
                  f"{o['op']['median_ms'] * 1e3:.0f} us, bare wheel "
                  f"{o['wheel']['median_ms'] * 1e3:.0f} us; a tf.function holding only "
                  f"tf.identity {o['tf_function_identity']['median_ms'] * 1e3:.0f} us "
                  f"(medians of 2,000 calls). Session.run: the search "
                  f"{o['session_op']['median_ms'] * 1e3:.0f} us, tf.identity "
                  f"{o['session_identity']['median_ms'] * 1e3:.0f} us."]
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=4096)
    p.add_argument("--noise", type=float, default=1.0, help="noise norm relative to a centre")
    p.add_argument("--num_queries", type=int, default=1000, help="queries for recall")
    p.add_argument("--latency_queries", type=int, default=400)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_size", type=int, default=0, help="0 = the builder's default")
    p.add_argument("--indexes", default="flat,ivfpq,ivfpq_fs32,ivfpq_fs64,hnsw")
    p.add_argument("--nlist", type=int, default=4096, help="IVF lists of the IVF factories")
    p.add_argument("--work_dir", default="/tmp/faiss_bench")
    p.add_argument("--json", default="")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--skip_generic", action="store_true")
    # internal (child processes)
    p.add_argument("--build_one", default="")
    p.add_argument("--items_path", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--wheel_generic_child", default="")
    p.add_argument("--queries_path", default="")
    p.add_argument("--exact_path", default="")
    args = p.parse_args()
    if args.build_one:
        return _build_one(args)
    if args.wheel_generic_child:
        return _wheel_generic_child(args)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    items_path, queries_path, tag = _data(args)
    queries = np.load(queries_path)
    exact = _exact(args, items_path, queries, tag)
    exact_path = os.path.join(args.work_dir, f"exact_{tag}_{len(queries)}_{args.k}.npy")
    names = [n for n in args.indexes.split(",") if n]
    builds = [_build(args, name, items_path, tag) for name in names]
    result = {"num_items": args.num_items, "dim": args.dim, "k": args.k, "batch": args.batch,
              "clusters": args.clusters, "noise": args.noise,
              "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "builds": builds, "search": []}
    for built in builds:
        result["search"].extend(_measure_search(args, built, queries, exact))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    result["overhead"] = _op_overhead(args)
    if not args.skip_generic:
        result["wheel_generic"] = _wheel_generic(args, builds, queries_path, exact_path)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    _report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
