"""The search tests' fixtures: FAISS index files made by code and numpy references."""
from tests.support.faiss_fixtures import make_index, ref  # noqa: F401  (pytest fixtures)
