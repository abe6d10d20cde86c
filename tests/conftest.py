"""Shared test fixtures: the real datasets in ../shared/datasets (skip cleanly when absent),
and the tiny trained model of the export, serving and ranking tests (and its Flat index)."""
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


@pytest.fixture(scope="session")
def tiny_flat_index(tmp_path_factory, tiny_history_model) -> str:
    """The index build directory of tiny_history_model's catalog: one Flat shard and its
    lexical index (dpsr index defaults), built once per test process; read-only."""
    # Imported here: every test process loads this conftest, few need FAISS.
    from dpsr_tf.indexing import catalog_index  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.index_builder import IndexBuildConfig  # pylint: disable=import-outside-toplevel
    index_dir = str(tmp_path_factory.mktemp("tiny_flat_index") / "index")
    catalog_index.index_catalog(tiny_history_model.model_dir, index_dir,
                                IndexBuildConfig(factory="Flat"))
    return index_dir
