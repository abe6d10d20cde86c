"""Fixtures of the data tests: a tiny synthetic catalog and its prepared layout (made by code)."""
import pytest

from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.demo import synthetic_catalog as synthetic

TINY = synthetic.SyntheticConfig(num_items=300, num_users=60, num_interactions=3000, seed=7)


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    """A generated synthetic catalog directory (SyntheticResult)."""
    out = tmp_path_factory.mktemp("tiny_catalog")
    return synthetic.generate(TINY, str(out), log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_layout(tiny_catalog, tmp_path_factory):
    """A layout prepared from tiny_catalog (history_length 3 so truncation is exercised)."""
    out = tmp_path_factory.mktemp("tiny_layout") / "layout"
    prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=tiny_catalog.items_path, users=tiny_catalog.users_path,
        interactions=tiny_catalog.interactions_path, output=str(out), history_length=3,
        records_per_shard=1000), log=lambda *_: None)
    return str(out)
