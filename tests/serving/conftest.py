"""Fixtures of the serving tests: tiny DPSR-signature servables made by code, and cleanup of
every server process (also when a test fails)."""
import os

import pytest

from dpsr_tf.demo import server_processes as process
from tests.support import toy_servable as ts

SPEC = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
NUM_ITEMS = 240
QUERIES = ["apple iphone 15 pro", "苹果手机 256G", "cordless drill 20v", "Ｎｉｋｅ 跑步鞋 men",
           "ovivo phone case"]


@pytest.fixture(scope="session")
def spec():
    """The ToyServableSpec of every test servable."""
    return SPEC


@pytest.fixture(scope="session")
def queries():
    """Queries in English, Chinese, full-width and misspelled forms."""
    return list(QUERIES)


@pytest.fixture(scope="session", autouse=True)
def _stop_server_processes():
    """No server outlives the test session, whatever happened."""
    yield
    process.stop_all()


@pytest.fixture(scope="session")
def catalog():
    """(item_ids [N] object, item_embeddings [N, dim] float32), seeded."""
    return ts.make_items(NUM_ITEMS, SPEC.dim, seed=1)


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory, catalog):
    """base/dpsr with version 1 of the unsharded toy servable (and a warm-up file)."""
    base = tmp_path_factory.mktemp("models")
    ids, emb = catalog
    ts.write_toy_servable(os.path.join(base, "dpsr", "1"), ids, emb, SPEC,
                          warmup_queries=["warm up query"])
    return os.path.join(base, "dpsr")


@pytest.fixture(scope="session")
def shard_dirs(tmp_path_factory, catalog):
    """Two shards holding alternate items of the catalog: [base/shard0, base/shard1]."""
    base = tmp_path_factory.mktemp("shards")
    ids, emb = catalog
    dirs = []
    for s in range(2):
        path = os.path.join(base, f"shard{s}")
        ts.write_toy_servable(os.path.join(path, "1"), ids[s::2], emb[s::2], SPEC,
                              warmup_queries=["warm up query"])
        dirs.append(path)
    return dirs
