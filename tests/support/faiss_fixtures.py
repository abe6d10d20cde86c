"""FAISS fixtures of the search and indexing tests: tiny seeded embeddings, index files made by
code, and numpy references. The conftest.py of tests/search and tests/indexing import them."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def clustered_unit_vectors(n, d, seed, clusters=16, noise=0.35):
    """[n, d] float32 unit vectors around `clusters` random centres (item-embedding-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def brute_force(items, queries, k, metric="inner_product"):
    """Exact top k by numpy (the independent reference): (scores [B, k], labels [B, k])."""
    if metric == "inner_product":
        scores = queries.astype(np.float64) @ items.astype(np.float64).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((queries[:, None, :].astype(np.float64) - items[None].astype(np.float64))
                  ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def recall(found, truth):
    """Mean fraction of each row of `truth` labels present in the same row of `found`."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="session")
def make_index(tmp_path_factory):
    """make_index(factory, items, metric="inner_product", nprobe=None, ef_search=None) -> path
    of a FAISS index file written by the faiss-cpu wheel (trained on the items themselves)."""
    import faiss  # pylint: disable=g-import-not-at-top

    # One OpenMP thread for the wheel: on 2 shared cores, OpenMP barriers of concurrent test
    # runs make FAISS training orders of magnitude slower.
    faiss.omp_set_num_threads(1)
    root = tmp_path_factory.mktemp("faiss_indexes")
    counter = [0]

    def make(factory, items, metric="inner_product", nprobe=None, ef_search=None, ids=None):
        metric_type = faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2
        index = faiss.index_factory(items.shape[1], factory, metric_type)
        node = faiss.downcast_index(index)
        if isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
        if isinstance(node, (faiss.IndexPQ, faiss.IndexIVFPQ)):
            node.do_polysemous_training = False  # slow, and only for polysemous search
        if not index.is_trained:
            index.train(items)
        if ids is not None:
            index.add_with_ids(items, ids)
        else:
            index.add(items)
        if nprobe is not None:
            faiss.extract_index_ivf(index).nprobe = nprobe
        if ef_search is not None:
            faiss.downcast_index(index).hnsw.efSearch = ef_search
        counter[0] += 1
        path = str(root / f"index_{counter[0]}.faiss")
        faiss.write_index(index, path)
        return path

    return make


@pytest.fixture(scope="session")
def ref():
    """The reference helpers above, for test modules (importlib mode cannot import conftest)."""
    import types  # pylint: disable=g-import-not-at-top
    return types.SimpleNamespace(clustered_unit_vectors=clustered_unit_vectors,
                                 brute_force=brute_force, recall=recall)
