"""A tiny prepared layout (the real `prepare` on a seeded catalog), shared by this folder."""
import pytest

from tests.support.tiny_model import prepare_tiny_layout


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory):
    return prepare_tiny_layout(str(tmp_path_factory.mktemp("tiny")))
