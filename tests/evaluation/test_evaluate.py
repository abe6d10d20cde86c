"""End to end on a tiny seeded catalog: a short seeded training run retrieves far above random;
BM25 through bm25s on the same split; `dpsr evaluate` writes the metrics."""
import json
import os
import subprocess
import sys

import pytest

from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.testing import prepare_tiny_layout
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig

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
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("dpsr", "bm25"):
        assert {"recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "top@1",
                "top@10", "auc"} <= set(data[name])
    assert "dpsr  recall@10=" in proc.stdout


def test_cli_without_model_or_layout_is_an_error():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "evaluate"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "give --model_dir" in proc.stderr
