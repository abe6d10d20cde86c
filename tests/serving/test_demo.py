"""The serving demo driver (called by `dpsr demo`): servers and proxy up, queries through the
real client, top items printed with their head, every process gone afterwards."""
import os
import re
import shutil
import tempfile

import numpy as np

from dpsr_tf.demo import serving_demo as demo, server_processes as process
from tests.support import toy_servable as ts


def test_demo_driver_prints_top_items_and_cleans_up(shard_dirs, catalog, spec, tmp_path):
    lines = []
    queries = ["apple iphone 15 pro", "cordless drill 20v"]
    ids, emb = catalog
    titles = {i.decode(): f"title of {i.decode()}" for i in ids}
    # Other tests' servers may still run in this process (session fixtures, another order
    # under pytest-xdist): the demo must leave exactly what it found.
    before = list(process._STARTED)  # pylint: disable=protected-access
    results = demo.run_serving_demo(shard_dirs, queries, k=8, show=3, item_text=titles,
                                    out=lines.append, log_dir=str(tmp_path))
    want_ids, want_scores, want_heads = ts.reference_search(queries, ids, emb, spec, 8)
    for result, row_ids, row_scores, row_heads in zip(results, want_ids, want_scores,
                                                      want_heads):
        assert result.item_ids == [i.decode() for i in row_ids] and not result.partial
        np.testing.assert_allclose(result.scores, row_scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(result.heads, row_heads)
    text = "\n".join(lines)
    assert "2 index shards" in text and text.endswith("servers stopped")
    assert "Predict to the servers as frames" in text  # local replicas
    for i in range(2):  # each server took the demo's Predict calls as frames
        (log,) = [os.path.join(d, "log.txt") for d in os.listdir(tmp_path)
                  if d.startswith(f"dpsr-model_server_{i}-")]
        with open(os.path.join(tmp_path, log), encoding="utf-8") as f:
            read = re.search(r"framed Predict calls read at \S+: (\d+)", f.read())
        assert read is not None and int(read.group(1)) >= len(queries)
    first = results[0]
    assert (f"   1. {first.item_ids[0]:<16} score {first.scores[0]:7.4f}  head "
            f"{first.heads[0]}  title of {first.item_ids[0]}") in text
    assert process._STARTED == before  # pylint: disable=protected-access


def test_demo_lists_the_items_only_a_rewrite_found(capsys):
    """`dpsr demo` stage 9: the rewrite-only items of the lexical lists, grouped per query, and
    the count in the hybrid answers (0 with the reason when the fusion weighs BM25 0)."""
    from dpsr_tf.cli.demo import _print_rewrite_answers  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import FusionConfig  # pylint: disable=import-outside-toplevel

    def result(query, ids, sources):
        return demo.QueryResult(query, ids, np.zeros(len(ids), np.float32),
                                np.full(len(ids), -1, np.int32), False, 1.0, sources)

    lexical = [result("mouse", ["a", "b", "c"], ["rewrite", "lexical", "rewrite"]),
               result("apple", ["d", ""], ["lexical", ""]),
               result("小米", ["e"], ["rewrite"])]
    hybrid = [result("mouse", ["x", "c"], ["dense", "rewrite"])]
    titles = {"a": "逗猫老鼠 A", "c": "逗猫老鼠 C", "e": "小米手机"}
    _print_rewrite_answers(hybrid, lexical, titles, FusionConfig())
    out = capsys.readouterr().out
    assert "'mouse': 2 of its lexical top 10 only through a rewrite" in out
    assert "#1: a  逗猫老鼠 A" in out and "#3: c  逗猫老鼠 C" in out and "#2: b" not in out
    assert "'小米': 1 of" in out and "#1: e  小米手机" in out and "'apple'" not in out
    assert "in the hybrid top 10s above: 1 items only through a rewrite\n" in out
    _print_rewrite_answers([], lexical[1:2], titles, FusionConfig(lexical_weight=0.0))
    out = capsys.readouterr().out
    assert "no item of a lexical top 10 came only through a rewrite" in out
    assert "0 items only through a rewrite (the fusion chosen" in out


def test_a_local_servers_socket_fits_a_unix_socket_path_however_deep_its_work_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    short = tempfile.mkdtemp(prefix="d-")  # tmp_path itself may be too deep (pytest-xdist)
    try:
        shallow = process.model_server_process("/models/m", "m", log_dir=short, local=True)
        assert shallow.framed_socket == os.path.join(shallow.workdir, "predict.sock")
    finally:
        shutil.rmtree(short)
    server = process.model_server_process("/models/m", "m", log_dir=str(deep), local=True)
    assert len(os.fsencode(os.path.join(server.workdir, "predict.sock"))) > 107
    assert len(os.fsencode(server.framed_socket)) <= 107
    assert f"--framed_predict_socket={server.framed_socket}" in server.args
    assert server.replica == (server.address, server.framed_socket)
    assert process.model_server_process("/models/m", "m", log_dir=str(tmp_path),
                                        port=8600).replica == "127.0.0.1:8600"
    os.rmdir(server.socket_dir)
