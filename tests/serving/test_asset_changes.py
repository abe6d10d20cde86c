"""In-place changes to a serving version's files cannot crash `dpsr serve` or change its answers.

A careless redeploy truncates an index asset of a loaded version, or `cp`s another valid index
over it. The index cores never map a file under the model base path: they map a snapshot taken
at load in the asset cache directory (search_cc/core/asset_snapshot.h). A real `dpsr serve`
process serves a hybrid servable exported with --mmap_index (IVF lists and the BM25 index both
mapped); after each change the real client gets exactly the answers from before, and the
process lives. The snapshots are released with the version that holds them.
"""
import glob
import os
import shutil
import time

import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors
from tests.support.serving_testing import outputs

QUERIES = ["cat3 brand5", "w17 w203", "brand1 w99 cat0", "w5 w6 w7 brand2"]
K = 7
INDEX_FILES = ("index.faiss", "lexical.idx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_history_model):
    """Shard 0 of a 2-shard IVF build, exported hybrid with --mmap_index as base/dpsr/1; shard 1
    is exported too, for files that are valid but different."""
    work = tmp_path_factory.mktemp("asset_changes")
    model_dir = tiny_history_model.model_dir
    index_dir = str(work / "index")
    catalog_index.index_catalog(model_dir, index_dir,
                                IndexBuildConfig(factory="IVF4,SQ8", nprobe=4, num_shards=2))
    config = ServableConfig(default_k=5, max_k=50, mmap_index=True)
    versions = [export_servable(model_dir, index_dir, str(work / "models" / f"shard{s}"),
                                shard=s, servable=config) for s in range(2)]
    return {"work": work, "versions": versions, "model_dir": model_dir, "index_dir": index_dir}


def _asset(version_dir: str, name: str) -> str:
    (path,) = glob.glob(os.path.join(version_dir, "assets", name))
    return path


def _predict(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dpsr"
    tensors.from_ndarray(np.array([q.encode() for q in QUERIES], object), request.inputs["query"])
    tensors.from_ndarray(np.array(K, np.int32), request.inputs["k"])
    out = outputs(stub.Predict(request, timeout=60))
    return {"item_ids": out["item_ids"].tolist(), "scores": out["scores"].tolist(),
            "source": out["source"].tolist()}


def _mapped_files(pid: int):
    """Paths of the files the process maps (from /proc/<pid>/maps)."""
    paths = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].strip().removesuffix(" (deleted)"))
    return paths


def _mapped_inodes(pid: int, prefix: str):
    """{path: inode} of the files under `prefix` the process maps."""
    out = {}
    with open(f"/proc/{pid}/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(prefix):
                out[parts[5].strip()] = int(parts[4])
    return out


def _snapshots(cache: str):
    return sorted(glob.glob(os.path.join(cache, "*.snapshot")))


@pytest.fixture()
def server(exported, tmp_path, monkeypatch):
    """`dpsr serve` of a copy of shard 0's version 1, with its own asset cache directory."""
    base = str(tmp_path / "dpsr")
    shutil.copytree(exported["versions"][0], os.path.join(base, "1"))
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("DPSR_ASSET_CACHE_DIR", cache)
    srv = process.start_model_server(base, "dpsr", name="asset_changes")
    yield {"server": srv, "base": base, "cache": cache}
    srv.stop()


def test_in_place_truncation_and_copy_over_change_nothing(exported, server):
    srv, base, cache = server["server"], server["base"], server["cache"]
    stub = process.prediction_stub(srv.address)
    before = _predict(stub)
    sources = {s for row in before["source"] for s in row}
    assert sources & {b"lexical", b"both"} and sources & {b"dense", b"both"}, sources

    version = os.path.join(base, "1")
    for name in INDEX_FILES:  # truncate in place: half, then nothing
        path = _asset(version, name)
        os.truncate(path, os.path.getsize(path) // 2)
    assert _predict(stub) == before
    for name in INDEX_FILES:
        os.truncate(_asset(version, name), 0)
    assert _predict(stub) == before

    other = exported["versions"][1]
    for name in INDEX_FILES:  # `cp` another valid index over it: same inode, new bytes
        path = _asset(version, name)
        inode = os.stat(path).st_ino
        shutil.copyfile(_asset(other, name), path)
        assert os.stat(path).st_ino == inode
    assert _predict(stub) == before
    assert srv.alive()
    # Nothing under the model base path is mapped; both indexes are mapped from the cache.
    mapped = _mapped_files(srv.proc.pid)
    assert not [p for p in mapped if p.startswith(base)]
    assert len(_snapshots(cache)) == 2
    assert set(_snapshots(cache)) <= mapped


def test_unloaded_versions_release_their_snapshots(exported, server):
    srv, base, cache = server["server"], server["base"], server["cache"]
    stub = process.prediction_stub(srv.address)
    v1 = _predict(stub)
    v1_snapshots = _snapshots(cache)
    assert len(v1_snapshots) == 2
    # Version 2 holds shard 1's indexes (other bytes): it replaces version 1 (latest policy).
    shutil.copytree(exported["versions"][1], os.path.join(base, "2.tmp"))
    os.rename(os.path.join(base, "2.tmp"), os.path.join(base, "2"))
    deadline = time.monotonic() + 120
    while set(_snapshots(cache)) & set(v1_snapshots) or len(_snapshots(cache)) != 2:
        assert srv.alive() and time.monotonic() < deadline, (_snapshots(cache), v1_snapshots)
        time.sleep(0.2)
    assert _predict(stub) != v1  # version 2 answers now
    assert set(_snapshots(cache)) <= _mapped_files(srv.proc.pid)
    srv.stop()
    assert _snapshots(cache) == []
    assert [f for f in os.listdir(cache) if f.startswith(".tmp-")] == []


def test_servers_started_together_share_one_snapshot_per_index(exported, tmp_path, monkeypatch):
    """Two `dpsr serve` processes loading the same version at once (one port, --mmap_index's
    use) map the same snapshot files: one copy of each index in the page cache."""
    base = str(tmp_path / "dpsr")
    shutil.copytree(exported["versions"][0], os.path.join(base, "1"))
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("DPSR_ASSET_CACHE_DIR", cache)
    servers = process.start_all([process.model_server_process(base, "dpsr", name=f"share{i}")
                                 for i in range(2)])
    try:
        answers = [_predict(process.prediction_stub(s.address)) for s in servers]
        assert answers[0] == answers[1]
        maps = [_mapped_inodes(s.proc.pid, cache) for s in servers]
        assert len(_snapshots(cache)) == 2
        assert maps[0] == maps[1] and set(maps[0]) == set(_snapshots(cache))
        assert {os.stat(p).st_ino for p in _snapshots(cache)} == set(maps[0].values())
    finally:
        for s in servers:
            s.stop()
    assert _snapshots(cache) == []
