"""End to end on a tiny seeded catalog: a short seeded training run retrieves far above random;
BM25 through bm25s on the same split; `dpsr evaluate` writes the metrics; `dpsr evaluate
--served` ranks through the index `dpsr index` built."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.model.config import ModelConfig
from tests.support.tiny_model import prepare_tiny_layout
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig, build_index
from tests.support import waiting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    spec = prepare_tiny_layout(str(work))
    model_config = ModelConfig(num_heads=2, embedding_dim=32, token_embedding_dim=32,
                               item_hidden_units=(64,), query_hidden_units=(64,),
                               query_projection_dim=32, num_negatives=16, learning_rate=0.1)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(work / "model"),
                        batch_size=32, train_steps=600, save_checkpoints_steps=600,
                        eval_random_negatives=100, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(model_config, train)
    return spec, train.model_dir


def test_short_seeded_run_recall_far_above_random(trained):
    spec, model_dir = trained
    got = evaluate_lib.evaluate_model(model_dir, cfg=evaluate_lib.EvalConfig(num_random=100),
                                      log=lambda _: None)
    random_recall_at_10 = 10 / spec.num_items                   # 0.05
    assert got["recall@10"] > 5 * random_recall_at_10, got
    assert got["top@10"] > 0.3, got                             # random: 10 / 101
    assert got["auc"] > 0.65, got                               # clicks vs human negatives
    assert got["requests"] > 100


def test_bm25_baseline_on_the_same_split(trained):
    spec, _ = trained
    got = evaluate_lib.evaluate_bm25(spec.layout_dir, evaluate_lib.EvalConfig(num_random=100),
                                     log=lambda _: None)
    # Queries are words of their item's title: BM25 finds them.
    assert got["recall@10"] > 0.9 and got["mrr@10"] > 0.8, got


def test_cli_writes_metrics_json(trained, tmp_path):
    _, model_dir = trained
    out = tmp_path / "metrics.json"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "evaluate",
                           f"--model_dir={model_dir}", "--bm25", "--num_random=50",
                           f"--output={out}"], env=env, capture_output=True, text=True,
                          timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("dpsr", "bm25"):
        assert {"recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "top@1",
                "top@10", "auc"} <= set(data[name])
    assert "dpsr  recall@10=" in proc.stdout


def _per_query_run(model_dir, tmp_path, *flags):
    """`dpsr evaluate --per_query` with `flags`: (process, --output's JSON, the file's lines)."""
    out, per = tmp_path / "metrics.json", tmp_path / "per_query.jsonl"
    proc = _cli(f"--model_dir={model_dir}", *flags, f"--output={out}", f"--per_query={per}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per_request" not in out.read_text()
    return (proc, json.loads(out.read_text()),
            [json.loads(line) for line in per.read_text().splitlines()])


def test_cli_per_query_file_and_paired_comparison(trained, tmp_path):
    _, model_dir = trained
    proc, data, rows = _per_query_run(model_dir, tmp_path, "--bm25", "--bm25_bigrams",
                                      "--num_random=20")
    for system in ("dpsr", "bm25", "bm25_ub"):
        mine = [r for r in rows if r["system"] == system]
        assert [r["request"] for r in mine] == list(range(data[system]["requests"]))
        for metric in ("recall@10", "recall@100", "ndcg@10", "mrr@10"):
            assert np.mean([r[metric] for r in mine]) == pytest.approx(data[system][metric])
    by_system = {s: np.array([r["recall@100"] for r in rows if r["system"] == s])
                 for s in ("dpsr", "bm25")}
    first = data["paired"][0]
    assert (first["metric"], first["a"], first["b"]) == ("recall@100", "dpsr", "bm25")
    assert first["diff"] == pytest.approx((by_system["dpsr"] - by_system["bm25"]).mean())
    assert len(data["paired"]) == 3 * 3        # 3 metrics x 3 pairs of systems
    assert "paired comparison" in proc.stdout


def test_cli_tie_aware_rankings_are_systems_compared_among_themselves(trained, tmp_path):
    spec, model_dir = trained
    proc, data, rows = _per_query_run(model_dir, tmp_path, "--bm25", "--num_random=0",
                                      "--tie_aware")
    assert {r["system"] for r in rows} == {"dpsr", "bm25", "dpsr_tie_aware", "bm25_tie_aware"}
    want = evaluate_lib.tie_aware_bm25(spec.layout_dir, evaluate_lib.EvalConfig(num_random=0))
    mine = [r for r in rows if r["system"] == "bm25_tie_aware"]
    for metric, values in want.items():
        np.testing.assert_allclose([r[metric] for r in mine], values, atol=1e-12)
        assert data["bm25"]["tie_aware"][metric] == pytest.approx(values.mean())
    # As ranked against as ranked, tie-aware against tie-aware: 3 metrics x 2 pairs.
    assert sorted((c["a"], c["b"]) for c in data["paired"]) == sorted(
        [("dpsr", "bm25")] * 3 + [("dpsr_tie_aware", "bm25_tie_aware")] * 3)
    assert proc.stdout.count("tie-aware (expected over tied orders): recall@10=") == 2


def test_cli_without_model_or_layout_is_an_error():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "evaluate"], env=env,
                          capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode != 0
    assert "give --model_dir" in proc.stderr


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "evaluate", *args], env=env,
                          capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)


def test_cli_served_through_the_index_dpsr_index_built(trained, tmp_path):
    spec, model_dir = trained
    index_dir = str(tmp_path / "index")
    catalog_index.index_catalog(model_dir, index_dir,
                                IndexBuildConfig(factory="Flat", num_shards=2, num_threads=1))
    out = tmp_path / "metrics.json"
    proc = _cli(f"--model_dir={model_dir}", "--served", f"--index_dir={index_dir}",
                "--num_random=50", f"--output={out}", "--tie_aware")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())["dpsr"]
    for k in (10, 100, 1000):
        # A Flat index searches exhaustively: served = exact max over heads.
        assert got[f"served_recall@{k}"] == got[f"max_recall@{k}"], got
        assert got[f"served_overlap@{k}"] == 1.0 and got[f"recall_lost_to_index@{k}"] == 0.0
        assert got[f"recall_lost_to_max@{k}"] == pytest.approx(
            got[f"recall@{k}"] - got[f"max_recall@{k}"])
    assert got["served_ndcg@10"] == got["max_ndcg@10"]
    # The served list holds the whole tiny catalog, its float scores untied: the expectation
    # over tied orders is the one order.
    for metric, value in got["served_tie_aware"].items():
        assert value == pytest.approx(got[f"served_{metric}"], abs=1e-12), metric
    assert "served tie-aware (expected over tied orders): recall@10=" in proc.stdout
    assert got["served_num_shards"] == 2 and got["served_factory"] == "Flat"
    assert got["max_recall@10"] > 5 * 10 / spec.num_items, got       # far above random
    assert "dpsr  recall@10=" in proc.stdout
    assert "served (Flat, 2 shard(s), nprobe=n/a): recall@10=" in proc.stdout
    assert "recall lost: to_max@10=" in proc.stdout


@pytest.mark.parametrize("case", ["missing", "dimension"])
def test_cli_served_with_a_wrong_index_names_it_and_the_fix(trained, tmp_path, case):
    spec, model_dir = trained
    index_dir = str(tmp_path / "index")
    if case == "dimension":   # an index of another model: 8-dimensional vectors
        vectors = np.random.default_rng(0).standard_normal((spec.num_items, 8)).astype(
            np.float32)
        build_index(vectors, layout_lib.load_item_ids(spec), index_dir,
                    IndexBuildConfig(factory="Flat", num_threads=1))
    proc = _cli(f"--model_dir={model_dir}", "--served", f"--index_dir={index_dir}")
    assert proc.returncode != 0
    assert index_dir in proc.stderr
    assert f"dpsr index --model_dir={model_dir} --output_dir={index_dir}" in proc.stderr
    assert ("does not exist" if case == "missing" else
            "holds 8-dimensional vectors but the model's embeddings have 32") in proc.stderr
