"""FAISS indexing and search: build time, peak memory, latency, CPU, recall@k, TF op vs wheel.

Synthetic catalog: N clustered unit-norm d-dim item embeddings (seeded; C Gaussian centres,
items and queries = centre + noise, L2-normalized), queries drawn the same way. For each index
type:
  build   dpsr_tf.indexing.index_builder.build_index in a child process (wall seconds, peak RSS of the
          child, RSS before the build = the embeddings and ids it holds). `name@kF` variants of a
          refine index are the same file with the IndexRefine k_factor set to F.
  search  in ONE process, side by side on the same index file and the same queries:
            op      Dpsr>FaissSearch in a tf.function (dpsr_tf/search/faiss_ops.py; the FAISS the op
                    library links: tools/build_faiss.py, FAISS 1.7.3 from Debian's source
                    package at FAISS_OPT_LEVEL=avx2 on an AVX2 machine); small batches run on
                    the calling thread
            wheel1  faiss-cpu 1.7.3 index.search with omp_set_num_threads(1)
            wheel   the same with the wheel's default threads
          single query: median / p99 and CPU ms per query (process_time) over
          --latency_queries queries, interleaved in blocks of 20
          batched: --batch queries per call, ms per call and per query
          recall@k of op and wheel against exact search (numpy, chunked over the memmap)
  overhead  the op on a 1-vector index (k=1): the fixed cost TF adds per call
A second child measures the wheel's generic (non-AVX2) build (FAISS_DISABLE_CPU_FEATURES=AVX2)
on the same files: what a generic FAISS in the op would cost.

    nice -n 10 python bench/faiss_bench.py --num_items 1000000 --clusters 1000 --noise 0.5 \
        --work_dir /tmp/faiss_bench --indexes ivfpq,ivfpq_fs32,fs32_rsq8,fs32_rsq8@k2 \
        --json bench/results/faiss_1m.json

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
    # Fast scan + refine: 4-bit fast-scan candidates re-ranked with 8-bit codes
    # (SQ8: 64 B per item at d = 64; PQ32: 32 B). `name@kF` is the same index file with the
    # IndexRefine k_factor set to F (k * F candidates re-ranked); plain name = k_factor 4.
    "fs32_rsq8": ("IVF4096,PQ32x4fs,Refine(SQ8)", "nprobe", [32, 64, 128]),
    "fs32_rpq": ("IVF4096,PQ32x4fs,Refine(PQ32)", "nprobe", [32, 64, 128]),
    "fs64_rsq8": ("IVF4096,PQ64x4fs,Refine(SQ8)", "nprobe", [32, 64, 128]),
    # IVF with 8-bit scalar codes (64 B per item at d = 64): no PQ error, SIMD distances.
    "ivfsq8": ("IVF4096,SQ8", "nprobe", [32, 64, 128]),
    # 8-bit IVF-PQ candidates re-ranked with SQ8 codes (derived from an `ivfpq` build).
    "pq32_rsq8": ("IVF4096,PQ32,Refine(SQ8)", "nprobe", [32, 64, 128]),
}
DEFAULT_K_FACTOR = 4.0


def _base_name(name):
    return name.split("@")[0]


def _k_factor(name):
    """The IndexRefine k_factor of an index name (`fs32_rsq8@k2` -> 2.0), None if no refine."""
    if "Refine" not in INDEXES[_base_name(name)][0]:
        return None
    return float(name.split("@k")[1]) if "@k" in name else DEFAULT_K_FACTOR


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
    """Child process: builds one index with dpsr_tf.indexing.index_builder; prints a JSON line."""
    from dpsr_tf.indexing import index_builder  # pylint: disable=g-import-not-at-top
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
    return INDEXES[_base_name(name)][0].replace("IVF4096", f"IVF{nlist}")


def _with_k_factor(built, name):
    """A copy of a refine index file with another k_factor (the file stores it)."""
    import faiss  # pylint: disable=g-import-not-at-top
    path = built["index_file"].replace(".faiss", "") + f".k{_k_factor(name):g}.faiss"
    if not os.path.exists(path):
        index = faiss.read_index(built["index_file"])
        faiss.downcast_index(index).k_factor = _k_factor(name)
        faiss.write_index(index, path + ".tmp")
        os.replace(path + ".tmp", path)
    return dict(built, name=name, index_file=path)


def _build(args, name, items_path, tag):
    if _k_factor(name) is not None:
        base = _base_name(name)
        fs_name = _refined_from(base)
        if fs_name and args.derive_refine:
            built = _derive_refine(args, base, _build_base(args, fs_name, items_path, tag),
                                   items_path, tag)
        else:
            built = _build_base(args, base, items_path, tag)
        return _with_k_factor(built, name)
    return _build_base(args, name, items_path, tag)


def _refined_from(name):
    """The INDEXES entry whose factory is this refine index's base, or None."""
    base_factory = INDEXES[name][0].rsplit(",", 1)[0]
    return next((n for n, v in INDEXES.items() if v[0] == base_factory), None)


def _derive_refine(args, name, base_built, items_path, tag):
    """A refine index from an already built base index: the refine codes (SQ8 / PQ) trained on
    the builder's training sample size (seeded) and added for every item, wrapped with the
    base in an IndexRefine, as index_factory + build_index would make it (only the base is not
    trained again). Build seconds = the base's + the refine codes'."""
    import faiss  # pylint: disable=g-import-not-at-top
    marker = os.path.join(args.work_dir, f"built_{tag}_{name}_{args.nlist}.json")
    if os.path.exists(marker) and not args.rebuild:
        with open(marker) as f:
            return json.load(f)
    factory = _factory(name, args.nlist)
    refine_factory = factory.rsplit(",", 1)[1]
    refine_factory = refine_factory[len("Refine("):-1] if refine_factory != "RFlat" else "Flat"
    _log(f"deriving {name} ({factory}) from {base_built['name']}: training + adding "
         f"{refine_factory} codes")
    t0 = time.monotonic()
    items = np.load(items_path, mmap_mode="r")
    base = faiss.read_index(base_built["index_file"])
    refine = faiss.index_factory(args.dim, refine_factory, faiss.METRIC_INNER_PRODUCT)
    if isinstance(faiss.downcast_index(refine), faiss.IndexPQ):
        faiss.downcast_index(refine).do_polysemous_training = False
    if not refine.is_trained:
        n_train = min(len(items), max(65536, 64 * args.nlist))
        sample = np.sort(np.random.default_rng(args.seed).choice(len(items), n_train, False))
        refine.train(np.ascontiguousarray(items[sample]))
    for lo in range(0, len(items), 65536):
        refine.add(np.ascontiguousarray(items[lo:lo + 65536]))
    index = faiss.IndexRefine(base, refine)
    index.k_factor = DEFAULT_K_FACTOR
    out_dir = os.path.join(args.work_dir, f"index_{tag}_{name}_{args.nlist}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "index.faiss")
    faiss.write_index(index, path)
    result = dict(base_built, name=name, factory=factory, index_file=path,
                  build_seconds=base_built["build_seconds"] + time.monotonic() - t0,
                  index_bytes=os.path.getsize(path), derived_from=base_built["name"])
    with open(marker, "w") as f:
        json.dump(result, f)
    _log(f"derived {name} in {time.monotonic() - t0:.1f} s")
    return result


def _build_base(args, name, items_path, tag):
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
        from dpsr_tf.indexing import index_builder  # pylint: disable=g-import-not-at-top
        index_builder.extract_ivf(index).nprobe = value
    elif knob == "ef_search":
        faiss.downcast_index(index).hnsw.efSearch = value


def _measure_search(args, built, queries, exact, wheel_only=False):
    """Op and wheel side by side on one index file: per knob value, latency, CPU and recall.

    Single queries, interleaved in blocks of 20 so machine noise hits every side alike:
      op      Dpsr>FaissSearch in a tf.function; the op searches small batches on the calling
              thread (one-threaded, as a servable runs it)
      wheel1  the faiss-cpu wheel with omp_set_num_threads(1) (one-threaded)
      wheel   the wheel with its default threads (what a Python service would get)
    Per side: wall-clock median / p99 and CPU seconds of the whole process per query
    (time.process_time over the side's calls: all threads, TF dispatch included for the op).
    """
    import faiss  # pylint: disable=g-import-not-at-top
    name = built["name"]
    _, knob, values = INDEXES[_base_name(name)]
    if args.knob_values and knob is not None:
        values = [int(v) for v in args.knob_values.split(",")]
    k = args.k
    wheel = faiss.read_index(built["index_file"])
    default_threads = faiss.omp_get_max_threads()
    rows = []
    if not wheel_only:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        from dpsr_tf.search import faiss_ops  # pylint: disable=g-import-not-at-top
        index = faiss_ops.FaissIndex(built["index_file"])

        @tf.function(input_signature=[tf.TensorSpec([None, args.dim], tf.float32),
                                      tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
        def op_search(q, nprobe, ef):
            return faiss_ops.search(index, q, k, nprobe=nprobe, ef_search=ef)

    latency_n = args.latency_queries if name != "flat" else max(40, args.latency_queries // 4)
    for value in values:
        row = {"name": name, "factory": built["factory"], "knob": knob, "value": value,
               "k_factor": _k_factor(name)}
        if knob:
            _set_knob(wheel, knob, value)

        def wheel_fn(q):
            return wheel.search(q, k)[1]

        def wheel1_fn(q):
            faiss.omp_set_num_threads(1)
            try:
                return wheel.search(q, k)[1]
            finally:
                faiss.omp_set_num_threads(default_threads)

        sides = {"wheel": wheel_fn, "wheel1": wheel1_fn}
        if not wheel_only:
            nprobe = tf.constant(value if knob == "nprobe" else 0)
            ef = tf.constant(value if knob == "ef_search" else 0)
            sides["op"] = lambda q: op_search(q, nprobe, ef)[1].numpy()  # noqa: E731
        for fn in sides.values():
            fn(queries[:1])
        wall = {side: [] for side in sides}
        cpu = dict.fromkeys(sides, 0.0)
        for lo in range(0, latency_n, 20):
            block = [queries[i % len(queries)][None] for i in range(lo, min(lo + 20, latency_n))]
            for side, fn in sides.items():
                c0 = time.process_time()
                wall[side].append(_timings(fn, np.concatenate(block), len(block)))
                cpu[side] += time.process_time() - c0
        for side in sides:
            ms = np.concatenate(wall[side])
            row[f"{side}_single"] = _summary(ms)
            row[f"{side}_cpu_ms"] = cpu[side] * 1e3 / len(ms)
        b = queries[:args.batch]
        for side in ("op", "wheel") if not wheel_only else ("wheel",):
            row[f"{side}_batch_ms"] = float(np.median(
                [_timings(lambda _, fn=sides[side]: fn(b), b, 1)[0] for _ in range(3)]))
        if not wheel_only:
            found = np.concatenate([sides["op"](queries[lo:lo + 256])
                                    for lo in range(0, len(queries), 256)])
            row["op_recall"] = _recall(found, exact)
        row["wheel_recall"] = _recall(wheel.search(queries, k)[1], exact)
        rows.append(row)
        _log(json.dumps(row))
    return rows


def _multi_head(args, built, queries, heads=2, requests=400):
    """A 2-head request as the servable runs it (TF1 Session): one Dpsr>FaissSearch per head
    against one call on all heads' queries ([B * H, d]), same index, interleaved in blocks."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from dpsr_tf.search import faiss_ops  # pylint: disable=g-import-not-at-top
    k = args.k
    with tf.Graph().as_default():
        index = faiss_ops.FaissIndex(built["index_file"])
        emb = tf.compat.v1.placeholder(tf.float32, [None, heads, args.dim])
        per_head = [faiss_ops.search(index, emb[:, h, :], k, name=f"head_{h}")
                    for h in range(heads)]
        sep_scores = tf.stack([sc for sc, _ in per_head], axis=1)
        sep_labels = tf.stack([lb for _, lb in per_head], axis=1)
        flat = tf.reshape(emb, [-1, args.dim])
        sc, lb = faiss_ops.search(index, flat, k, name="all_heads")
        one_scores = tf.reshape(sc, [-1, heads, k])
        one_labels = tf.reshape(lb, [-1, heads, k])
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                          inter_op_parallelism_threads=2)
        with tf.compat.v1.Session(config=config) as sess:
            sess.run(tf.compat.v1.tables_initializer())
            reqs = [np.stack([queries[(2 * i) % len(queries)],
                              queries[(2 * i + 1) % len(queries)]])[None]
                    for i in range(requests)]
            a = sess.run([sep_scores, sep_labels], {emb: reqs[0]})
            b = sess.run([one_scores, one_labels], {emb: reqs[0]})
            same = bool(np.array_equal(a[1], b[1]))
            wall = {"separate": [], "one_call": []}
            cpu = {"separate": 0.0, "one_call": 0.0}
            fetch = {"separate": sep_labels, "one_call": one_labels}
            for lo in range(0, requests, 20):
                for side in wall:
                    c0 = time.process_time()
                    for r in reqs[lo:lo + 20]:
                        t0 = time.perf_counter()
                        sess.run(fetch[side], {emb: r})
                        wall[side].append((time.perf_counter() - t0) * 1e3)
                    cpu[side] += time.process_time() - c0
    out = {"index": built["name"], "heads": heads, "identical_labels": same}
    for side in wall:
        out[side] = _summary(np.array(wall[side]))
        out[side]["cpu_ms"] = cpu[side] * 1e3 / requests
    _log(json.dumps(out))
    return out


def _op_faiss():
    """The FAISS the op library links (setup.py's _dpsr_ops.faiss.json)."""
    from dpsr_tf import op_library  # pylint: disable=g-import-not-at-top
    info = op_library.faiss_build_info()
    return (f"{info['debian_source_version']} {info['opt_level']}" if info else
            "unknown (library built without tools/build_faiss.py)")


def _recall(found, exact):
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def _op_overhead(args):
    """Per-call cost of the op on a 1-vector index (k=1), next to the wheel's."""
    import faiss  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from dpsr_tf.search import faiss_ops  # pylint: disable=g-import-not-at-top
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
             f"({result['machine']}, {result['date']}; op FAISS: {result.get('op_faiss')})\n",
             "| index | factory | build s | peak RSS GiB (before build) | index MiB |",
             "|---|---|---:|---:|---:|"]
    for b in result["builds"]:
        lines.append(f"| {b['name']} | `{b['factory']}` | {b['build_seconds']:.1f} | "
                     f"{b['peak_rss'] / 2**30:.2f} ({b['rss_before_build'] / 2**30:.2f}) | "
                     f"{b['index_bytes'] / 2**20:.0f} |")
    generic = {(r["name"], r["value"]): r for r in result.get("wheel_generic", [])}
    lines += ["", "| index | knob | recall@k op (wheel) | one-threaded single query, median ms: "
              "op / wheel (op/wheel) | CPU ms per query: op / wheel 1 thread / wheel default "
              "threads | wheel default threads ms (generic build) | batch of "
              f"{result['batch']}: op / wheel ms per query |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["search"]:
        g = generic.get((r["name"], r["value"]))
        g_ms = f" ({g['wheel1_single']['median_ms']:.2f})" if g else ""
        knob = f"{r['knob']}={r['value']}" if r["knob"] else "-"
        op, w1 = r["op_single"]["median_ms"], r["wheel1_single"]["median_ms"]
        lines.append(
            f"| {r['name']} | {knob} | {r['op_recall']:.3f} ({r['wheel_recall']:.3f}) | "
            f"{op:.2f} / {w1:.2f} ({op / w1:.2f}x) | "
            f"{r['op_cpu_ms']:.2f} / {r['wheel1_cpu_ms']:.2f} / {r['wheel_cpu_ms']:.2f} | "
            f"{r['wheel_single']['median_ms']:.2f}{g_ms} | "
            f"{r['op_batch_ms'] / result['batch']:.3f} / "
            f"{r['wheel_batch_ms'] / result['batch']:.3f} |")
    if "multi_head" in result:
        m = result["multi_head"]
        lines += ["", f"2-head request ({m['index']}, TF1 Session as served, "
                  f"labels identical: {m['identical_labels']}): one call per head "
                  f"{m['separate']['median_ms']:.3f} ms median / {m['separate']['cpu_ms']:.3f} ms "
                  f"CPU; one call for both heads {m['one_call']['median_ms']:.3f} ms / "
                  f"{m['one_call']['cpu_ms']:.3f} ms CPU."]
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
    p.add_argument("--knob_values", default="",
                   help="comma-separated nprobe / ef_search values for every index (default: "
                        "each index's own list in INDEXES)")
    p.add_argument("--work_dir", default="/tmp/faiss_bench")
    p.add_argument("--json", default="")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--skip_generic", action="store_true")
    p.add_argument("--multi_head", default="",
                   help="index name: also time a 2-head request as 2 calls vs 1 call")
    p.add_argument("--derive_refine", type=int, default=1,
                   help="1: build a refine index by adding refine codes to its already built "
                        "base index (e.g. fs32_rsq8 from ivfpq_fs32); 0: build_index from scratch")
    p.add_argument("--build_only", action="store_true",
                   help="make data, exact answers and index files; measure nothing")
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
    if args.build_only:
        return 0
    result = {"num_items": args.num_items, "dim": args.dim, "k": args.k, "batch": args.batch,
              "clusters": args.clusters, "noise": args.noise,
              "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "builds": builds, "search": [],
              "op_faiss": _op_faiss(), "load_average_start": os.getloadavg()}
    for built in builds:
        result["search"].extend(_measure_search(args, built, queries, exact))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    if args.multi_head:
        result["multi_head"] = _multi_head(
            args, next(b for b in builds if b["name"] == args.multi_head), queries)
    result["overhead"] = _op_overhead(args)
    if not args.skip_generic:
        result["wheel_generic"] = _wheel_generic(args, builds, queries_path, exact_path)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    result["load_average_end"] = os.getloadavg()
    _report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
