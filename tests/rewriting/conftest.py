"""The rewriting tests' tiny rewriter, trained once per test process and shared read-only."""
import pytest

from tests.support.tiny_rewriter import train_tiny_rewriter


@pytest.fixture(scope="session")
def tiny_rewriter(tmp_path_factory) -> dict:
    """{"spec", "model_dir", "losses", "work"} of TINY trained 30 steps (train_tiny_rewriter);
    read-only: tests write their outputs under their own tmp_path."""
    return train_tiny_rewriter(str(tmp_path_factory.mktemp("tiny_rewriter")))
