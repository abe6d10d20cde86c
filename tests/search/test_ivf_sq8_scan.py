"""The op's own IVF-SQ8 inner-product search (search_cc/core/ivf_sq8_scan.cc), against numpy.

The reference decodes every item with the faiss wheel (centroid + 8-bit residual, as FAISS
stores it), probes the same lists by numpy inner products with the centroids, and ranks the
probed items exactly in float64. The op must return the same items with the same scores.
"""
import faiss
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search import faiss_ops


def _build(items, nlist, qtype=None, by_residual=True, metric=faiss.METRIC_INNER_PRODUCT):
    d = items.shape[1]
    quantizer = faiss.IndexFlat(d, metric)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit if qtype is None else qtype, metric)
    index.by_residual = by_residual
    index.train(items)
    index.add(items)
    index.quantizer_ptr = quantizer  # keep the quantizer alive with the index (SWIG ownership)
    return index


def _write(tmp_path, index, name="sq8.faiss"):
    path = str(tmp_path / name)
    faiss.write_index(index, path)
    return path


def _reference(index, items, queries, k, nprobe):
    """Exact top k over the probed lists of `index`, in float64: (scores, labels)."""
    nlist = index.nlist
    centroids = index.quantizer.reconstruct_n(0, nlist).astype(np.float64)
    index.make_direct_map()
    decoded = index.reconstruct_n(0, index.ntotal).astype(np.float64)
    _, assign = index.quantizer.search(items, 1)
    coarse = queries.astype(np.float64) @ centroids.T
    scores = np.full((len(queries), k), -np.inf)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    for i, q in enumerate(queries.astype(np.float64)):
        probed = np.argsort(-coarse[i], kind="stable")[:nprobe]
        cand = np.flatnonzero(np.isin(assign[:, 0], probed))
        s = decoded[cand] @ q
        order = np.lexsort((cand, -s))[:k]
        scores[i, :len(order)] = s[order]
        labels[i, :len(order)] = cand[order]
    return scores, labels


def _uses_own_scan(path):
    """Whether the op searches this file with ivf_sq8_scan (its description says so)."""
    return b"search=dpsr_sq8_scan" in faiss_ops.FaissIndex(path).info().description.numpy()


def _search(path, queries, k, nprobe, mmap=False):
    index = faiss_ops.FaissIndex(path, mmap=mmap)
    scores, labels = faiss_ops.search(index, queries, k, nprobe=nprobe)
    return scores.numpy(), labels.numpy()


def _assert_same_results(scores, labels, want_scores, want_labels):
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=2e-5)
    # Labels must be equal except where two candidates tie within float32 rounding.
    differ = labels != want_labels
    if differ.any():
        np.testing.assert_allclose(scores[differ], want_scores[differ], atol=2e-5)
    for row in labels:  # no item twice
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found)


def _data(n, d, seed, clusters=12):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# d = 64 and 96 take the op's own scan (multiples of 32); 40 and 20 are searched by FAISS.
@pytest.mark.parametrize("d", [64, 96, 40, 20])
@pytest.mark.parametrize("batch", [1, 37])  # 37 >= kParallelBatch: queries in parallel
def test_matches_numpy_over_the_probed_lists(tmp_path, d, batch):
    items = _data(4000, d, seed=d)
    queries = _data(batch, d, seed=d + 1)
    index = _build(items, nlist=32)
    path = _write(tmp_path, index)
    assert _uses_own_scan(path) == (d % 32 == 0)
    for k, nprobe in [(10, 3), (300, 8), (1000, 32)]:
        scores, labels = _search(path, queries, k, nprobe)
        want_scores, want_labels = _reference(index, items, queries, k, nprobe)
        _assert_same_results(scores, labels, want_scores, want_labels)


@pytest.mark.parametrize("variant", ["uniform", "no_residual"])
def test_uniform_range_and_direct_codes(tmp_path, variant):
    items = _data(3000, 64, seed=7)
    queries = _data(9, 64, seed=8)
    if variant == "uniform":
        index = _build(items, 16, qtype=faiss.ScalarQuantizer.QT_8bit_uniform)
    else:
        index = _build(items, 16, by_residual=False)
    path = _write(tmp_path, index)
    assert _uses_own_scan(path)
    scores, labels = _search(path, queries, 200, 5)
    want_scores, want_labels = _reference(index, items, queries, 200, 5)
    _assert_same_results(scores, labels, want_scores, want_labels)


def test_agrees_with_the_wheels_own_search(tmp_path):
    items = _data(5000, 64, seed=11)
    queries = _data(20, 64, seed=12)
    index = _build(items, 64)
    path = _write(tmp_path, index)
    for nprobe in (1, 8, 64):
        index.nprobe = nprobe
        want_scores, want_labels = index.search(queries, 500)
        scores, labels = _search(path, queries, 500, nprobe)
        found = want_labels >= 0  # FAISS pads with -FLT_MAX, the op with -inf
        np.testing.assert_array_equal(labels >= 0, found)
        np.testing.assert_allclose(scores[found], want_scores[found], rtol=0, atol=1e-5)
        overlap = np.mean([len((set(a) & set(b)) - {-1}) / max(1, (b >= 0).sum())
                           for a, b in zip(labels, want_labels)])
        assert overlap > 0.999, f"nprobe {nprobe}: only {overlap:.4f} of FAISS's results"


def test_stored_nprobe_is_the_default_and_mmap_gives_the_same(tmp_path):
    items = _data(3000, 64, seed=13)
    queries = _data(5, 64, seed=14)
    index = _build(items, 32)
    index.nprobe = 6
    path = _write(tmp_path, index)
    scores, labels = _search(path, queries, 100, 0)
    want_scores, want_labels = _reference(index, items, queries, 100, 6)
    _assert_same_results(scores, labels, want_scores, want_labels)
    m_scores, m_labels = _search(path, queries, 100, 0, mmap=True)
    np.testing.assert_array_equal(m_labels, labels)
    np.testing.assert_array_equal(m_scores, scores)


def test_fewer_candidates_than_k_are_padded(tmp_path):
    items = _data(600, 64, seed=15)
    queries = _data(3, 64, seed=16)
    index = _build(items, 16)
    path = _write(tmp_path, index)
    scores, labels = _search(path, queries, 1000, 2)  # two lists hold far fewer than 1,000
    want_scores, want_labels = _reference(index, items, queries, 1000, 2)
    found = want_labels >= 0
    assert 0 < found.sum(axis=1).max() < 1000
    np.testing.assert_array_equal(labels[~found], -1)
    assert np.all(np.isneginf(scores[~found]))
    _assert_same_results(scores, labels, want_scores, want_labels)


def test_equal_scores_come_in_label_order(tmp_path):
    rng = np.random.default_rng(17)
    base = _data(200, 64, seed=18)
    items = np.repeat(base, 3, axis=0)  # every vector three times: equal codes, equal scores
    index = _build(items, 8)
    path = _write(tmp_path, index)
    picked = rng.integers(0, 200, 4)
    scores, labels = _search(path, base[picked], 60, 8)
    for j, row_s, row_l in zip(picked, scores, labels):
        # The query's own three copies score highest, equal, in label order.
        np.testing.assert_array_equal(row_l[:3], [3 * j, 3 * j + 1, 3 * j + 2])
        assert row_s[0] == row_s[1] == row_s[2] > row_s[3]
        for s in np.unique(row_s):
            run = row_l[row_s == s]
            np.testing.assert_array_equal(run, np.sort(run))
        assert np.all(np.diff(row_s) <= 0)


def test_l2_sq8_is_searched_by_faiss_itself(tmp_path):
    items = _data(3000, 64, seed=19)
    queries = _data(8, 64, seed=20)
    index = _build(items, 16, metric=faiss.METRIC_L2)
    path = _write(tmp_path, index)
    assert not _uses_own_scan(path)
    index.nprobe = 4
    want_scores, want_labels = index.search(queries, 50)
    scores, labels = _search(path, queries, 50, 4)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)


def test_environment_switch_selects_faiss_search(tmp_path, monkeypatch):
    items = _data(3000, 64, seed=21)
    queries = _data(6, 64, seed=22)
    index = _build(items, 16)
    path = _write(tmp_path, index)
    own_scores, own_labels = _search(path, queries, 300, 4)
    assert _uses_own_scan(path)
    monkeypatch.setenv("DPSR_SQ8_SCAN", "faiss")  # read at load: a new load, not the cached one
    assert not _uses_own_scan(path)
    scores, labels = _search(path, queries, 300, 4)
    np.testing.assert_allclose(scores, own_scores, rtol=0, atol=1e-5)
    assert np.mean([len(set(a) & set(b)) / 300 for a, b in zip(labels, own_labels)]) > 0.999
    monkeypatch.setenv("DPSR_SQ8_SCAN", "dpsr")
    assert _uses_own_scan(path)
    monkeypatch.setenv("DPSR_SQ8_SCAN", "fast")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="DPSR_SQ8_SCAN must be 'dpsr' \\(the default\\) or 'faiss', got 'fast'"):
        faiss_ops.FaissIndex(path)
