"""The indexing tests' fixtures: seeded embeddings and numpy references."""
from tests.support.faiss_fixtures import make_index, ref  # noqa: F401  (pytest fixtures)
