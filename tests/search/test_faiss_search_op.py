"""Dpsr>FaissSearch and the FAISS index resource, against numpy brute force and the faiss wheel.

Every index here is written by the faiss-cpu 1.7.3 wheel and read by the op library's static
FAISS 1.7.3, in one process (the wheel and the op library load side by side).
"""
import gc
import os
import threading

import faiss
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search import faiss_ops


def _search(index, queries, k, **kw):
    scores, labels = faiss_ops.search(index, queries, k, **kw)
    return scores.numpy(), labels.numpy()


# ---------------------------------------------------------------- exact search vs numpy

@pytest.mark.parametrize("dim", [8, 64])
@pytest.mark.parametrize("batch", [1, 7, 33])  # 33 > 20: FAISS switches to its BLAS path
@pytest.mark.parametrize("k", [1, 10, 100])
def test_flat_inner_product_matches_numpy(make_index, ref, dim, batch, k):
    rng = np.random.default_rng(dim * 1000 + batch * 10 + k)
    items = rng.standard_normal((300, dim)).astype(np.float32)  # gaussian: no exact ties
    queries = rng.standard_normal((batch, dim)).astype(np.float32)
    index = faiss_ops.FaissIndex(make_index("Flat", items))
    scores, labels = _search(index, queries, k)
    want_scores, want_labels = ref.brute_force(items, queries, k)
    assert scores.shape == labels.shape == (batch, k)
    assert scores.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    # Ids must be equal except where two candidates tie within float32 rounding.
    differ = labels != want_labels
    if differ.any():
        np.testing.assert_allclose(scores[differ], want_scores[differ], atol=1e-4)


def test_flat_l2_matches_numpy(make_index, ref):
    rng = np.random.default_rng(5)
    items = rng.standard_normal((200, 16)).astype(np.float32)
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    index = faiss_ops.FaissIndex(make_index("Flat", items, metric="l2"))
    scores, labels = _search(index, queries, 20)
    want_scores, want_labels = ref.brute_force(items, queries, 20, metric="l2")
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)
    info = index.info()
    assert info.metric.numpy() == b"l2" and int(info.size) == 200 and int(info.dimension) == 16


# ---------------------------------------------------------------- approximate indexes

# (factory, per-call knobs, recall@10 bound vs exact). Bounds hold with margin on this data.
APPROX = [
    ("IVF32,Flat", {"nprobe": 32}, 1.0),   # every list probed: exact
    ("IVF32,Flat", {"nprobe": 4}, 0.80),
    ("IVF32,PQ16", {"nprobe": 8}, 0.60),
    ("IVF32,PQ16x4fs", {"nprobe": 8}, 0.25),  # 4-bit codes: coarse
    ("HNSW16", {"ef_search": 64}, 0.85),
    ("RR48,IVF16,Flat", {"nprobe": 16}, 0.99),  # a rotation, every list probed: exact
    ("IVF32_HNSW8,Flat", {"nprobe": 8, "ef_search": 32}, 0.85),
    ("SQfp16", {}, 0.99),   # every item, 16-bit floats: exact but for near-ties (auto's band)
    ("IVF32,SQfp16", {"nprobe": 32}, 0.99),
]


@pytest.mark.parametrize("factory,knobs,bound", APPROX)
def test_approximate_recall_and_agreement_with_wheel(make_index, ref, factory, knobs, bound):
    items = ref.clustered_unit_vectors(3000, 48, seed=1)
    queries = ref.clustered_unit_vectors(40, 48, seed=2)
    path = make_index(factory, items)
    index = faiss_ops.FaissIndex(path)
    _, labels = _search(index, queries, 10, **knobs)
    _, exact = ref.brute_force(items, queries, 10)
    got = ref.recall(labels, exact)
    assert got >= bound, f"{factory} {knobs}: recall@10 {got:.3f} < {bound}"

    # The same search through the wheel (its own SIMD build) finds (nearly) the same items.
    wheel = faiss.read_index(path)
    if "nprobe" in knobs:
        faiss.extract_index_ivf(wheel).nprobe = knobs["nprobe"]
    if "ef_search" in knobs:
        node = faiss.downcast_index(wheel)
        if isinstance(node, faiss.IndexHNSW):
            node.hnsw.efSearch = knobs["ef_search"]
        else:
            faiss.downcast_index(faiss.extract_index_ivf(wheel).quantizer).hnsw.efSearch = \
                knobs["ef_search"]
    _, wheel_labels = wheel.search(queries, 10)
    assert ref.recall(labels, wheel_labels) >= 0.97


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ16x4fs"])
def test_per_call_nprobe_does_not_change_the_shared_index(make_index, ref, factory):
    items = ref.clustered_unit_vectors(2000, 32, seed=3)
    queries = ref.clustered_unit_vectors(20, 32, seed=4)
    path = make_index(factory, items, nprobe=2)
    index = faiss_ops.FaissIndex(path)
    default_before = _search(index, queries, 20)
    everything = _search(index, queries, 20, nprobe=32)
    default_after = _search(index, queries, 20)
    np.testing.assert_array_equal(default_before[1], default_after[1])
    np.testing.assert_array_equal(_search(index, queries, 20, nprobe=2)[1], default_before[1])
    wheel = faiss.read_index(path)
    assert ref.recall(default_before[1], wheel.search(queries, 20)[1]) >= 0.97
    faiss.extract_index_ivf(wheel).nprobe = 32
    assert ref.recall(everything[1], wheel.search(queries, 20)[1]) >= 0.97
    if factory == "IVF32,Flat":  # all 32 lists probed: exact
        np.testing.assert_array_equal(everything[1], ref.brute_force(items, queries, 20)[1])


def test_hnsw_per_call_ef_search(make_index, ref):
    items = ref.clustered_unit_vectors(3000, 32, seed=5)
    queries = ref.clustered_unit_vectors(50, 32, seed=6)
    index = faiss_ops.FaissIndex(make_index("HNSW8", items, ef_search=10))
    _, exact = ref.brute_force(items, queries, 10)
    low = ref.recall(_search(index, queries, 10)[1], exact)
    high = ref.recall(_search(index, queries, 10, ef_search=200)[1], exact)
    assert high >= 0.9 and high > low
    lower = ref.recall(_search(index, queries, 10, ef_search=4)[1], exact)  # below the stored 10
    assert lower <= low
    assert ref.recall(_search(index, queries, 10)[1], exact) == low  # default untouched


def test_idmap_labels_are_mapped(make_index, ref):
    rng = np.random.default_rng(7)
    items = rng.standard_normal((100, 8)).astype(np.float32)
    ids = np.arange(100, dtype=np.int64) * 7 + 1000
    index = faiss_ops.FaissIndex(make_index("IDMap,Flat", items, ids=ids))
    _, labels = _search(index, items[:5], 3, nprobe=4)  # nprobe is ignored by a flat index
    _, want = ref.brute_force(items, items[:5], 3)
    np.testing.assert_array_equal(labels, ids[want])


# ---------------------------------------------------------------- padding and shapes

@pytest.mark.parametrize("metric,pad", [("inner_product", -np.inf), ("l2", np.inf)])
@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat"])
def test_padding_when_k_exceeds_the_index(make_index, ref, metric, pad, factory):
    items = ref.clustered_unit_vectors(12, 8, seed=8)
    nprobe = 4 if factory.startswith("IVF") else None
    index = faiss_ops.FaissIndex(make_index(factory, items, metric=metric, nprobe=nprobe))
    scores, labels = _search(index, items[:3], 20)
    assert labels.shape == (3, 20)
    np.testing.assert_array_equal(np.sort(labels[:, :12], axis=1), np.tile(np.arange(12), (3, 1)))
    assert (labels[:, 12:] == -1).all() and (scores[:, 12:] == pad).all()
    assert np.isfinite(scores[:, :12]).all()


def test_empty_index_returns_only_padding(make_index):
    import faiss as _faiss  # pylint: disable=g-import-not-at-top
    path = make_index("Flat", np.zeros((0, 4), np.float32))
    assert _faiss.read_index(path).ntotal == 0
    scores, labels = _search(faiss_ops.FaissIndex(path), np.ones((2, 4), np.float32), 3)
    assert (labels == -1).all() and (scores == -np.inf).all()


def test_empty_batch(make_index, ref):
    index = faiss_ops.FaissIndex(make_index("Flat", ref.clustered_unit_vectors(10, 8, 0)))
    scores, labels = _search(index, np.zeros((0, 8), np.float32), 5)
    assert scores.shape == labels.shape == (0, 5)


def test_static_shapes(make_index, ref):
    index = faiss_ops.FaissIndex(make_index("Flat", ref.clustered_unit_vectors(10, 8, 0)))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def constant_k(q):
        return faiss_ops.search(index, q, 4)

    @tf.function(input_signature=[tf.TensorSpec([3, 8], tf.float32), tf.TensorSpec([], tf.int32)])
    def tensor_k(q, k):
        return faiss_ops.search(index, q, k)

    assert constant_k.get_concrete_function().structured_outputs[0].shape.as_list() == [None, 4]
    assert tensor_k.get_concrete_function().structured_outputs[1].shape.as_list() == [3, None]
    assert tensor_k(np.ones((3, 8), np.float32), tf.constant(2))[1].shape == (3, 2)


def test_shape_function_rejects_bad_ranks(make_index, ref):
    path = make_index("Flat", ref.clustered_unit_vectors(10, 8, 0))
    with tf.Graph().as_default():
        index = faiss_ops.FaissIndex(path)
        with pytest.raises(ValueError, match="must be rank 2"):
            faiss_ops.search(index, tf.zeros([8]), 3)
        with pytest.raises(ValueError, match="must be rank 0"):
            faiss_ops.search(index, tf.zeros([1, 8]), tf.constant([3]))
        with pytest.raises(ValueError, match="must be rank 0"):
            faiss_ops.search(index, tf.zeros([1, 8]), 3, nprobe=tf.constant([1, 2]))
        with pytest.raises(ValueError, match="non-negative"):
            faiss_ops.search(index, tf.zeros([1, 8]), tf.constant(-3))


# ---------------------------------------------------------------- errors, never crashes

@pytest.fixture(scope="module")
def small_index(make_index, ref):
    return faiss_ops.FaissIndex(make_index("Flat", ref.clustered_unit_vectors(50, 8, 0)))


@pytest.mark.parametrize("queries,k,kw,error,message", [
    (np.ones((2, 7), np.float32), 3, {}, tf.errors.InvalidArgumentError,
     "dimension 7 but the index has dimension 8"),
    (np.ones((2, 8), np.float32), tf.constant(0), {}, tf.errors.InvalidArgumentError,
     r"k must be in \[1, 10000\], got 0"),
    (np.ones((2, 8), np.float32), tf.constant(10001), {}, tf.errors.InvalidArgumentError,
     r"k must be in \[1, 10000\], got 10001"),
    (np.ones((2, 8), np.float32), 3, {"nprobe": tf.constant(-1)},
     tf.errors.InvalidArgumentError, "nprobe must be in"),
    (np.ones((2, 8), np.float32), 3, {"ef_search": tf.constant(-5)},
     tf.errors.InvalidArgumentError, "ef_search must be in"),
    (np.array([[1, 2, 3, 4, 5, 6, 7, np.nan]], np.float32), 3, {},
     tf.errors.InvalidArgumentError, "query 0 has a non-finite value nan at column 7"),
    (np.ones((2, 8), np.float32), 0, {}, ValueError, r"k must be in \[1, 10000\], got 0"),
    (np.ones((2, 8), np.float32), 10001, {}, ValueError, "got 10001"),
    (np.ones((2, 8), np.float32), 3, {"nprobe": -2}, ValueError, "nprobe must be in"),
])
def test_bad_search_inputs(small_index, queries, k, kw, error, message):
    with pytest.raises(error, match=message) as info:
        faiss_ops.search(small_index, queries, k, **kw)
    if error is tf.errors.InvalidArgumentError and "k must" not in message:
        assert "index_" in str(info.value)  # the message names the index file


def test_rank_1_queries_at_run_time(small_index):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 2|matrix"):
        faiss_ops.search(small_index, np.ones(8, np.float32), 3)


def _valid_index_bytes(make_index, ref):
    with open(make_index("IVF4,Flat", ref.clustered_unit_vectors(200, 8, 0)), "rb") as f:
        return f.read()


@pytest.mark.parametrize("case,error,message", [
    ("missing", tf.errors.NotFoundError, "FAISS index file not found: '.*missing.faiss'"),
    ("truncated", tf.errors.InvalidArgumentError, "cannot read FAISS index file '.*truncated"),
    ("garbage", tf.errors.InvalidArgumentError, "cannot read FAISS index file '.*garbage"),
    ("trailing", tf.errors.InvalidArgumentError, "trailing.faiss' has 7 unexpected bytes"),
    ("empty", tf.errors.InvalidArgumentError, "empty.faiss' is empty"),
    ("directory", tf.errors.InvalidArgumentError, "is not a regular file"),
])
@pytest.mark.parametrize("mmap", [False, True])
def test_bad_index_files(tmp_path, make_index, ref, case, error, message, mmap):
    good = _valid_index_bytes(make_index, ref)
    path = tmp_path / f"{case}.faiss"
    if case == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "trailing":
        path.write_bytes(good + b"extra!!")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    with pytest.raises(error, match=message):
        faiss_ops.FaissIndex(str(path), mmap=mmap)


def test_every_truncation_is_an_error_not_a_crash(tmp_path, make_index, ref):
    good = _valid_index_bytes(make_index, ref)
    for cut in list(range(0, 64, 3)) + list(range(64, len(good), max(1, len(good) // 40))):
        path = tmp_path / f"cut_{cut}.faiss"
        path.write_bytes(good[:cut])
        with pytest.raises((tf.errors.InvalidArgumentError,)):
            faiss_ops.FaissIndex(str(path))


def test_search_before_initialization_in_a_graph(make_index, ref):
    path = make_index("Flat", ref.clustered_unit_vectors(10, 8, 0))
    with tf.Graph().as_default():
        index = faiss_ops.FaissIndex(path)
        labels = faiss_ops.search(index, tf.ones([1, 8]), 2)[1]
        with tf.compat.v1.Session() as sess:
            with pytest.raises(tf.errors.FailedPreconditionError, match="not initialized"):
                sess.run(labels)
            sess.run(tf.compat.v1.tables_initializer())
            assert sess.run(labels).shape == (1, 2)


# ---------------------------------------------------------------- resource life cycle

def test_release_on_delete_and_reload_swaps(make_index, ref):
    a = make_index("Flat", ref.clustered_unit_vectors(10, 8, 0))
    b = make_index("Flat", ref.clustered_unit_vectors(30, 8, 1))
    index = faiss_ops.FaissIndex(a)
    handle = index.resource_handle
    assert int(faiss_ops.index_info(handle).size) == 10
    del index
    gc.collect()
    with pytest.raises(tf.errors.FailedPreconditionError, match="not initialized"):
        faiss_ops.search(handle, np.ones((1, 8), np.float32), 2)

    ops = faiss_ops._ops()  # pylint: disable=protected-access
    shared = ops.dpsr_faiss_index_handle(shared_name="test_swap")
    ops.dpsr_faiss_index_load(shared, a)
    ops.dpsr_faiss_index_load(shared, a)  # same path: a second holder, no reload
    ops.dpsr_faiss_index_load(shared, b)  # another path: swapped in
    assert int(faiss_ops.index_info(shared).size) == 30
    for _ in range(3):
        assert int(faiss_ops.index_info(shared).size) == 30
        ops.dpsr_faiss_index_release(shared)
    with pytest.raises(tf.errors.FailedPreconditionError):
        faiss_ops.index_info(shared)
    ops.dpsr_faiss_index_release(shared)  # releasing a gone resource is a no-op


def test_info_describes_the_index(make_index, ref):
    index = faiss_ops.FaissIndex(make_index("IVF8,PQ4x4fs", ref.clustered_unit_vectors(500, 16, 0),
                                            nprobe=3))
    info = index.info()
    assert int(info.size) == 500 and int(info.dimension) == 16
    assert info.metric.numpy() == b"inner_product"
    assert info.description.numpy().startswith(b"IndexIVFPQFastScan(nlist=8, nprobe=3")


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8", "IVF16,PQ8x4fs", "HNSW8", "Flat",
                                     "SQfp16"])
def test_mmap_load_gives_the_same_results(make_index, ref, factory):
    items = ref.clustered_unit_vectors(1000, 16, seed=9)
    queries = ref.clustered_unit_vectors(10, 16, seed=10)
    path = make_index(factory, items, nprobe=4 if "IVF" in factory else None)
    in_memory = _search(faiss_ops.FaissIndex(path), queries, 15, nprobe=8)
    mapped = faiss_ops.FaissIndex(path, mmap=True)
    np.testing.assert_array_equal(_search(mapped, queries, 15, nprobe=8)[1], in_memory[1])
    np.testing.assert_allclose(_search(mapped, queries, 15, nprobe=8)[0], in_memory[0])


_IN_PLACE_SCRIPT = """
import json, os, sys
import numpy as np
from dpsr_tf.search import faiss_ops
path, other, queries = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
index = faiss_ops.FaissIndex(path, mmap=True)
def search():
    scores, labels = faiss_ops.search(index, queries, 15, nprobe=16)
    return scores.numpy().tolist(), labels.numpy().tolist()
before = search()
answers = []
size = os.path.getsize(path)
with open(path, "r+b") as f:  # in place, as a careless redeploy: truncate, then cp over it
    f.truncate(size // 2)
    answers.append(search())
    f.truncate(0)
    answers.append(search())
    f.write(open(other, "rb").read())
answers.append(search())
cache = os.environ["DPSR_ASSET_CACHE_DIR"]
mapped = any(cache in line for line in open("/proc/self/maps"))
del index  # the last holder: its snapshot file goes
import gc; gc.collect()
left = sorted(os.listdir(cache)) if os.path.isdir(cache) else None
print(json.dumps({"before": before, "after": answers, "mapped": mapped, "left": left}))
"""


@pytest.mark.parametrize("cache", ["writable", "unusable"])
def test_mmap_index_survives_in_place_changes_of_its_file(make_index, ref, tmp_path, cache):
    """The op maps a snapshot, never the file: truncating it or writing another index over it
    in place leaves the answers as they were. A fresh process (a fault there fails the test,
    not the test run). Without a usable cache directory the index is read into memory."""
    import json  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    items = ref.clustered_unit_vectors(1000, 16, seed=9)
    queries = ref.clustered_unit_vectors(10, 16, seed=10)
    path = str(tmp_path / "served.faiss")
    with open(make_index("IVF16,Flat", items, nprobe=4), "rb") as f:
        open(path, "wb").write(f.read())
    other = make_index("IVF16,Flat", ref.clustered_unit_vectors(1000, 16, seed=11), nprobe=4)
    np.save(tmp_path / "queries.npy", queries)
    (tmp_path / "file").write_text("x")
    cache_dir = tmp_path / ("cache" if cache == "writable" else "file/cache")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PLACE_SCRIPT, path, other, str(tmp_path / "queries.npy")],
        capture_output=True, text=True, timeout=300, cwd=root,
        env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="1",
                 DPSR_ASSET_CACHE_DIR=str(cache_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want_scores, want_labels = ref.brute_force(items, queries, 15)
    assert got["before"][1] == want_labels.tolist()  # nprobe = nlist: exact
    np.testing.assert_allclose(got["before"][0], want_scores, rtol=1e-4)
    assert got["after"] == [got["before"]] * 3
    assert got["mapped"] == (cache == "writable")
    assert got["left"] == ([] if cache == "writable" else None)
    if cache == "unusable":
        assert "is held in private memory" in proc.stderr


# ---------------------------------------------------------------- concurrency

def _hammer(run, cases, threads=8, rounds=15):
    errors = []

    def worker(t):
        try:
            for r in range(rounds):
                args, want = cases[(t + r) % len(cases)]
                np.testing.assert_array_equal(run(*args), want)
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("factory", ["IVF16,PQ8x4fs", "HNSW8", "Flat"])
def test_concurrent_eager_searches_with_different_knobs(make_index, ref, factory):
    items = ref.clustered_unit_vectors(2000, 16, seed=11)
    index = faiss_ops.FaissIndex(make_index(factory, items, nprobe=2 if "IVF" in factory else None))

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)] +
                 [tf.TensorSpec([], tf.int32)] * 2)
    def run(q, nprobe, ef):
        return faiss_ops.search(index, q, 10, nprobe=nprobe, ef_search=ef)[1]

    cases = []
    for i, (nprobe, ef) in enumerate([(0, 0), (1, 8), (4, 16), (16, 64), (8, 0)]):
        q = ref.clustered_unit_vectors(25 if i % 2 else 3, 16, seed=100 + i)
        cases.append(((q, nprobe, ef), run(q, nprobe, ef).numpy()))
    _hammer(lambda q, n, e: run(q, n, e).numpy(), cases)


def test_concurrent_session_runs(make_index, ref):
    items = ref.clustered_unit_vectors(2000, 16, seed=12)
    path = make_index("IVF16,Flat", items, nprobe=2)
    with tf.Graph().as_default():
        index = faiss_ops.FaissIndex(path)
        q = tf.compat.v1.placeholder(tf.float32, [None, 16])
        nprobe = tf.compat.v1.placeholder(tf.int32, [])
        labels = faiss_ops.search(index, q, 10, nprobe=nprobe)[1]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.tables_initializer())
            cases = []
            for i, n in enumerate([0, 1, 16, 5]):
                qs = ref.clustered_unit_vectors(4 + 10 * i, 16, seed=200 + i)
                want = ref.brute_force(items, qs, 10)[1] if n == 16 else None
                got = sess.run(labels, {q: qs, nprobe: n})
                if want is not None:
                    np.testing.assert_array_equal(got, want)
                cases.append(((qs, n), got))
            _hammer(lambda qs, n: sess.run(labels, {q: qs, nprobe: n}), cases)


def test_loads_beside_the_faiss_wheel_without_symbol_clashes():
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    from dpsr_tf import op_library  # pylint: disable=g-import-not-at-top
    out = subprocess.run(["nm", "-D", "--defined-only", op_library.library_path()],
                         capture_output=True, text=True, check=True).stdout
    exported = [line for line in out.splitlines() if "faiss" in line]
    assert not exported, f"the op library exports FAISS symbols: {exported[:5]}"
    assert faiss.__version__ == "1.7.3" and sys.modules.get("faiss") is faiss
