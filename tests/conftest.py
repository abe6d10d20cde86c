"""Shared test fixtures: the real datasets in ../shared/datasets (skip cleanly when absent),
and the tiny trained model of the export, serving and ranking tests."""
import os

import pytest

from tests.support import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.environ.get("DPSR_DATASETS", os.path.join(os.path.dirname(ROOT), "shared",
                                                         "datasets"))


@pytest.fixture(scope="session")
def datasets_dir():
    """Path of ../shared/datasets; the test is skipped when it is not there (a user's clone)."""
    if not os.path.isdir(DATASETS):
        pytest.skip(f"real datasets not found at {DATASETS} (set DPSR_DATASETS)")
    return DATASETS


def dataset_path(*parts):
    """Path inside the datasets folder, or skip the calling test if it is missing."""
    path = os.path.join(DATASETS, *parts)
    if not os.path.exists(path):
        pytest.skip(f"dataset file not found: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_history_model(tmp_path_factory) -> tiny_model.TinyModel:
    """The tiny DPSR-h model (2 heads, user profile + history) trained once per test process
    on prepare_tiny_layout's catalog; read-only: copy it before changing it."""
    return tiny_model.train_shared_tiny_model(str(tmp_path_factory.mktemp("tiny_history")))
