"""Shared by the training tests: a tiny prepared layout and the flags of a tiny model."""
import os
import sys

import pytest

from tests.support.tiny_model import prepare_tiny_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A small model whose steps are cheap; two threads per task (2 cores are shared).
TINY_MODEL_FLAGS = [
    "--embedding_dim=16", "--token_embedding_dim=16", "--feature_embedding_dim=4",
    "--item_hidden_units=32", "--query_hidden_units=32", "--query_projection_dim=16",
    "--num_heads=2", "--num_negatives=8", "--learning_rate=0.1", "--batch_size=16",
    "--intra_op_threads=1", "--inter_op_threads=2", "--eval_random_negatives=50",
    "--eval_batch_size=64", "--log_step_count_steps=50", "--throttle_secs=1",
    "--shuffle_buffer=1000",
]


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory):
    return prepare_tiny_layout(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def task_env():
    """Environment of a child task: the repo on PYTHONPATH, quiet C++ logs, no TF_CONFIG."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return env


@pytest.fixture
def tiny_model_flags():
    return list(TINY_MODEL_FLAGS)


@pytest.fixture
def dpsr_command():
    """dpsr_command("train", ...) -> argv of `dpsr train ...` with this interpreter."""
    return lambda *args: [sys.executable, "-m", "dpsr_tf.cli", *args]
