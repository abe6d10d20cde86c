"""dpsr_tf.indexing.index_builder and dpsr_tf.indexing.index_layout: shards, id maps and manifests round trip, and
searching every shard with the op and merging gives numpy's exact top k over the catalog."""
import hashlib
import json
import os

import faiss
import numpy as np
import pytest

from dpsr_tf.search import faiss_ops
from dpsr_tf.indexing import index_builder
from dpsr_tf.indexing import index_layout


def _ids(n):
    return [f"sku-{i:05d}" for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    faiss.omp_set_num_threads(1)  # 2 shared cores: OpenMP barriers crawl under contention


# ---------------------------------------------------------------- sharding rule

def test_shard_rule_matches_its_definition_and_golden_values():
    # Golden values pin the rule (changing it would silently reshuffle every catalog).
    assert [index_layout.shard_of(i, 4) for i in ["sku-00000", "sku-00001", "a", "商品"]] == \
        [_blake_mod(i, 4) for i in ["sku-00000", "sku-00001", "a", "商品"]]
    assert index_layout.shard_of("a", 1) == 0
    ids = _ids(2000)
    got = index_layout.shard_assignments(ids, 5)
    assert got.tolist() == [_blake_mod(i, 5) for i in ids]
    counts = np.bincount(got, minlength=5)
    assert counts.min() > 300  # a hash spreads sequential ids evenly (expected 400 each)
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        index_layout.shard_of("a", 0)


def _blake_mod(item_id, shards):
    """The documented rule, written independently of the module."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    value = 0
    for i, byte in enumerate(digest):  # little-endian
        value += byte << (8 * i)
    return value % shards


def test_shard_rule_golden_literals():
    assert index_layout.shard_of("sku-00000", 1000) == _blake_mod("sku-00000", 1000)
    assert [index_layout.shard_of(f"item{i}", 3) for i in range(8)] == \
        [_blake_mod(f"item{i}", 3) for i in range(8)]


# ---------------------------------------------------------------- build and round trip

@pytest.mark.parametrize("num_shards", [1, 3])
def test_shards_round_trip_and_merged_search_is_exact(tmp_path, ref, num_shards):
    n, d, k = 900, 16, 10
    items = ref.clustered_unit_vectors(n, d, seed=31)
    ids = _ids(n)
    config = index_builder.IndexBuildConfig(factory="Flat", num_shards=num_shards,
                                            add_batch_size=128)
    manifest = index_builder.build_index(items, ids, str(tmp_path), config)
    assert manifest == index_layout.read_manifest(str(tmp_path))
    assert manifest.num_items == n and manifest.num_shards == num_shards
    assert manifest.dimension == d and manifest.metric == "inner_product"
    assert manifest.build_seconds > 0 and manifest.peak_rss_bytes > 0
    assert manifest.faiss_version == "1.7.3" and manifest.description.startswith("IndexFlat")

    seen = []
    queries = ref.clustered_unit_vectors(5, d, seed=32)
    merged_scores, merged_ids = [], []
    for shard in range(num_shards):
        index_file, ids_file = manifest.shard_paths(str(tmp_path), shard)
        shard_ids = index_layout.read_id_map(ids_file, manifest.shards[shard].num_items)
        assert all(index_layout.shard_of(i, num_shards) == shard for i in shard_ids)
        seen.extend(shard_ids)
        rows = [ids.index(i) for i in shard_ids]  # label j of this shard is row rows[j]
        wheel = faiss.read_index(index_file)
        np.testing.assert_array_equal(faiss.rev_swig_ptr(wheel.get_xb(), wheel.ntotal * d)
                                      .reshape(-1, d), items[rows])
        scores, labels = faiss_ops.search(faiss_ops.FaissIndex(index_file), queries, k)
        merged_scores.append(scores.numpy())
        merged_ids.append(np.where(labels.numpy() >= 0,
                                   shard_ids[np.maximum(labels.numpy(), 0)], None))
    assert sorted(seen) == ids  # every item exactly once
    scores = np.concatenate(merged_scores, 1)
    found = np.concatenate(merged_ids, 1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    _, exact = ref.brute_force(items, queries, k)
    np.testing.assert_array_equal(np.take_along_axis(found, top, 1),
                                  np.array(ids, dtype=object)[exact])


@pytest.mark.parametrize("factory,check", [
    ("IVF16,PQ8x4fs", lambda m, idx: m.nprobe == 5 and m.train_size == 1200 and
     faiss.extract_index_ivf(idx).nprobe == 5),
    ("IVF16,PQ8", lambda m, idx: not faiss.downcast_index(idx).do_polysemous_training),
    ("HNSW8", lambda m, idx: m.ef_search == 40 and m.train_size == 0 and
     faiss.downcast_index(idx).hnsw.efSearch == 40),
    ("OPQ8,IVF8,Flat", lambda m, idx: m.description.startswith("IndexPreTransform(IndexIVF")),
    # Refine: the stored nprobe reaches the IVF inside IndexRefine (FAISS 1.7.3's
    # try_extract_index_ivf does not look there), k_factor is config.refine_k_factor (8), and
    # neither the base nor the 8-bit PQ refine codes get polysemous training.
    ("IVF16,PQ8x4fs,Refine(PQ8)", lambda m, idx: m.nprobe == 5 and m.train_size == 1200 and
     index_builder.extract_ivf(idx).nprobe == 5 and faiss.downcast_index(idx).k_factor == 8.0
     and not faiss.downcast_index(faiss.downcast_index(idx).refine_index)
     .do_polysemous_training),
])
def test_factories(tmp_path, ref, factory, check):
    items = ref.clustered_unit_vectors(1200, 32, seed=33)
    config = index_builder.IndexBuildConfig(factory=factory, nprobe=5, ef_search=40,
                                            train_size=5000, seed=3)
    manifest = index_builder.build_index(items, _ids(1200), str(tmp_path), config)
    index, ids = index_builder.load_shard(str(tmp_path), 0)
    assert index.ntotal == 1200 and list(ids) == _ids(1200)
    assert check(manifest, index), manifest
    # The op reads what the wheel wrote and, with its stored defaults, finds what the wheel
    # finds.
    queries = ref.clustered_unit_vectors(20, 32, seed=38)
    _, labels = faiss_ops.search(faiss_ops.FaissIndex(manifest.shard_paths(str(tmp_path), 0)[0]),
                                 queries, 5)
    assert ref.recall(labels.numpy(), index.search(queries, 5)[1]) >= 0.95


def test_training_sample_is_seeded(tmp_path, ref):
    items = ref.clustered_unit_vectors(3000, 16, seed=34)
    config = index_builder.IndexBuildConfig(factory="IVF8,Flat", train_size=500, seed=7)
    index_builder.build_index(items, _ids(3000), str(tmp_path / "a"), config)
    index_builder.build_index(items, _ids(3000), str(tmp_path / "b"), config)
    with open(tmp_path / "a" / "shard_00000" / "index.faiss", "rb") as a, \
            open(tmp_path / "b" / "shard_00000" / "index.faiss", "rb") as b:
        assert a.read() == b.read()


def test_normalize_and_l2(tmp_path, ref):
    rng = np.random.default_rng(35)
    items = (rng.standard_normal((200, 8)) * 5).astype(np.float32)
    original = items.copy()
    config = index_builder.IndexBuildConfig(factory="Flat", metric="l2", normalize=True)
    manifest = index_builder.build_index(items, _ids(200), str(tmp_path), config)
    np.testing.assert_array_equal(items, original)  # the caller's array is untouched
    index, _ = index_builder.load_shard(str(tmp_path), 0)
    stored = faiss.rev_swig_ptr(index.get_xb(), 200 * 8).reshape(200, 8)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    assert manifest.metric == "l2" and manifest.normalized


def test_more_shards_than_items_gives_empty_shards(tmp_path, ref):
    items = ref.clustered_unit_vectors(3, 8, seed=36)
    manifest = index_builder.build_index(items, _ids(3), str(tmp_path),
                                         index_builder.IndexBuildConfig("HNSW8", num_shards=8))
    empty = [s for s in manifest.shards if s.num_items == 0]
    assert len(empty) >= 5
    index_file, ids_file = manifest.shard_paths(str(tmp_path), empty[0].shard)
    assert index_layout.read_id_map(ids_file).size == 0
    _, labels = faiss_ops.search(faiss_ops.FaissIndex(index_file), items, 2)
    assert (labels.numpy() == -1).all()


def test_mmap_load_of_a_built_shard(tmp_path, ref):
    items = ref.clustered_unit_vectors(1000, 16, seed=37)
    config = index_builder.IndexBuildConfig(factory="IVF8,Flat", nprobe=8)
    manifest = index_builder.build_index(items, _ids(1000), str(tmp_path), config)
    index_file = manifest.shard_paths(str(tmp_path), 0)[0]
    wheel, _ = index_builder.load_shard(str(tmp_path), 0, mmap=True)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(wheel).invlists),
                      faiss.OnDiskInvertedLists)
    _, op_labels = faiss_ops.search(faiss_ops.FaissIndex(index_file, mmap=True), items[:4], 5)
    np.testing.assert_array_equal(op_labels.numpy(), wheel.search(items[:4], 5)[1])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("mutate,message", [
    (lambda x, ids: (x, ids[:-1]), "9 item ids for 10 embeddings"),
    (lambda x, ids: (x, ids[:3] + ["sku-00001"] + ids[4:]), "item id #3 'sku-00001' repeats "
                                                            "item id #1"),
    (lambda x, ids: (x, ids[:2] + [""] + ids[3:]), "item id #2 is empty"),
    (lambda x, ids: (x, ids[:2] + ["a\nb"] + ids[3:]), "item id #2 'a\\\\nb' contains a line"),
    (lambda x, ids: (x, ids[:2] + [7] + ids[3:]), "item id #2 must be a str, got int"),
    (lambda x, ids: (np.where(np.arange(10)[:, None] == 4, np.nan, x), ids),
     "embedding row 4 \\(item id 'sku-00004'\\) has a non-finite value"),
    (lambda x, ids: (x[0], ids), "must be a \\[num_items, dim\\] array, got shape \\(8,\\)"),
    (lambda x, ids: (x.astype(np.int32), ids), "must be floating point, got dtype int32"),
])
def test_bad_inputs(tmp_path, ref, mutate, message):
    x, ids = mutate(ref.clustered_unit_vectors(10, 8, seed=0), _ids(10))
    with pytest.raises(ValueError, match=message):
        index_builder.build_index(x, ids, str(tmp_path), index_builder.IndexBuildConfig("Flat"))
    assert not os.path.exists(tmp_path / "manifest.json")


@pytest.mark.parametrize("config,message", [
    (dict(factory="IVF4,Nope"), "invalid FAISS factory string 'IVF4,Nope'"),
    (dict(factory="IDMap,Flat"), "IDMap is not supported"),
    # FAISS parses these and then crashes the process (segfault, SIGFPE) in train/add/search.
    (dict(factory="IVF0,Flat"), "every size in it must be at least 1, got 'IVF0'"),
    (dict(factory="PQ0"), "every size in it must be at least 1, got 'PQ0'"),
    (dict(factory="IVF2,PQ4x0"), "every size in it must be at least 1, got 'PQ4x0'"),
    (dict(factory="HNSW0"), "every size in it must be at least 1, got 'HNSW0'"),
    (dict(factory="IVF2_HNSW0,Flat"), "every size in it must be at least 1, got 'IVF2_HNSW0'"),
    (dict(factory="OPQ0,IVF2,PQ4"), "every size in it must be at least 1, got 'OPQ0'"),
    (dict(factory="RR0,Flat"), "every size in it must be at least 1, got 'RR0'"),
    (dict(factory=""), "factory must be a FAISS index_factory string"),
    (dict(metric="cosine"), "metric must be one of"),
    (dict(num_shards=0), "num_shards must be >= 1, got 0"),
    (dict(nprobe=-1), "nprobe must be >= 0, got -1"),
    (dict(refine_k_factor=0.5), r"refine_k_factor must be in \[1, 64\].*got 0.5"),
])
def test_bad_configs(tmp_path, ref, config, message):
    config = index_builder.IndexBuildConfig(**{"factory": "Flat", **config})
    with pytest.raises(ValueError, match=message):
        index_builder.build_index(ref.clustered_unit_vectors(10, 8, 0), _ids(10), str(tmp_path),
                                  config)


def test_existing_build_needs_overwrite(tmp_path, ref):
    items = ref.clustered_unit_vectors(10, 8, 0)
    config = index_builder.IndexBuildConfig("Flat", num_shards=3)
    index_builder.build_index(items, _ids(10), str(tmp_path), config)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        index_builder.build_index(items, _ids(10), str(tmp_path), config)
    manifest = index_builder.build_index(items[:5], _ids(5), str(tmp_path),
                                         index_builder.IndexBuildConfig("Flat"), overwrite=True)
    assert manifest.num_shards == 1
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "shard_00000"]


def test_manifest_and_id_map_validation(tmp_path, ref):
    manifest = index_builder.build_index(ref.clustered_unit_vectors(10, 8, 0), _ids(10),
                                         str(tmp_path), index_builder.IndexBuildConfig("Flat"))
    path = tmp_path / "manifest.json"
    body = json.loads(path.read_text())
    for field, value, message in [("format_version", 9, "format_version 9 is not supported"),
                                  ("metric", "cos", "field 'metric' is 'cos'"),
                                  ("num_items", 11, "shard sizes add up to 10, not num_items 11"),
                                  ("extra", 1, "unknown field 'extra'")]:
        path.write_text(json.dumps({**body, field: value}))
        with pytest.raises(ValueError, match=message):
            index_layout.read_manifest(str(tmp_path))
    path.write_text(manifest.to_json())
    ids_file = tmp_path / manifest.shards[0].ids_file
    ids_file.write_text("a\nb\n")
    with pytest.raises(ValueError, match="id map has 2 ids but the manifest says 10"):
        index_builder.load_shard(str(tmp_path), 0)
    ids_file.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match=":2: empty line"):
        index_layout.read_id_map(str(ids_file))
    os.remove(ids_file)
    with pytest.raises(ValueError, match=r"manifest.json: shard 0 ids file .* is missing"):
        index_layout.read_manifest(str(tmp_path))
    (tmp_path / manifest.shards[0].index_file).write_bytes(b"short")
    with pytest.raises(ValueError, match="has 5 bytes, the manifest says"):
        index_layout.read_manifest(str(tmp_path))
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="build did not finish"):
        index_layout.read_manifest(str(tmp_path))


@pytest.mark.parametrize("num_items, dim, want", [
    (1200, 32, "Flat"), (19999, 64, "Flat"), (20_000, 64, "SQfp16"), (54667, 128, "SQfp16"),
    (99999, 64, "SQfp16"), (100_000, 64, "IVF512,SQ8"),
    (1_000_000, 64, "IVF2048,SQ8"), (15_000_000, 64, "IVF8192,SQ8"),
    (100_000, 128, "IVF512,SQ8"), (500_000, 7, "IVF1024,SQ8"), (10 ** 12, 64, "IVF65536,SQ8")])
def test_auto_factory(num_items, dim, want):
    # Exhaustive below 100k (exact below 20k, 16-bit floats from there); above, nlist is the
    # power of two nearest 2 sqrt(n) (2 sqrt(100k) = 632 -> 512; 2 sqrt(1M) = 2000 -> 2048;
    # 2 sqrt(15M) = 7746 -> 8192), clamped to [64, 65536], with 8-bit scalar codes.
    assert index_builder.auto_factory(num_items, dim) == want


def _auto_shard(tmp_path, ref, n: int, dim: int, seed: int):
    """(items, manifest, shard 0's index) of n clustered unit vectors built with "auto"."""
    items = ref.clustered_unit_vectors(n, dim, seed=seed)
    manifest = index_builder.build_index(
        items, _ids(n), str(tmp_path), index_builder.IndexBuildConfig(factory="auto"))
    return items, manifest, index_builder.load_shard(str(tmp_path), 0)[0]


def test_auto_between_the_thresholds_is_exhaustive_fp16(tmp_path, ref):
    """From AUTO_FP16_FROM items "auto" stores the vectors as 16-bit floats and scans them all:
    every item of the exact top 10 is returned unless a returned one scores within fp16's
    rounding of it (2^-11 of |q| |x| per score, doubled for the pair)."""
    items, manifest, index = _auto_shard(tmp_path, ref, index_builder.AUTO_FP16_FROM, 16, 17)
    assert manifest.factory == "SQfp16"
    queries = ref.clustered_unit_vectors(50, 16, seed=18)
    got_scores, got = index.search(queries, 10)
    exact_scores = queries @ items.T
    exact = np.argsort(-exact_scores, axis=1, kind="stable")[:, :10]
    tolerance = 2 * 2.0 ** -11   # unit vectors: |q| |x| = 1
    swapped = 0
    for q in range(len(queries)):
        true_of_got = exact_scores[q, got[q]]
        np.testing.assert_allclose(got_scores[q], true_of_got, atol=tolerance)
        # The r-th returned item scores (exactly) within the rounding of the r-th best.
        assert np.all(true_of_got >= exact_scores[q, exact[q]] - tolerance), q
        swapped += len(set(exact[q]) - set(got[q]))
    assert swapped <= 5, swapped   # near-ties only: 500 results, clustered vectors


def test_auto_from_the_ivf_threshold_is_ivf_sq8(tmp_path, ref):
    """From AUTO_IVF_FROM items "auto" gives an IVF-SQ8 index whose search with every list
    probed equals exact search up to 8-bit rounding (top 10 of clustered vectors)."""
    items, manifest, index = _auto_shard(tmp_path, ref, index_builder.AUTO_IVF_FROM, 16, 7)
    assert manifest.factory == "IVF512,SQ8"
    faiss.extract_index_ivf(index).nprobe = 512
    queries = ref.clustered_unit_vectors(20, 16, seed=8)
    _, got = index.search(queries, 10)
    exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    overlap = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
    assert overlap >= 0.95, overlap


def test_auto_factory_is_resolved_per_shard_and_recorded(tmp_path, ref):
    items, manifest, index = _auto_shard(tmp_path, ref, 1200, 32, 33)
    assert manifest.factory == "Flat"
    queries = ref.clustered_unit_vectors(5, 32, seed=1)
    np.testing.assert_array_equal(index.search(queries, 10)[1],
                                  np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10])
