"""Catalog titles for the forward stage: the DPSR model's top items for each query.

The paper's forward model generates the title a query's users would click; a small rewriter
trained on one catalog's clicks generates generic titles instead ("home decorators collection
6 ft x 8 ft" for "disposer"). The DPSR model is itself a query -> clicked item model, so its
top items are real titles close to the query: `dpsr rewrite --title_source=dense` gives the
forward model these candidates to rank (Rewriter.rewrite(titles=...)) instead of letting it
generate one. Ranking here is exact and the rule serving ranks by: an item's score is its
best dot product over the query's heads (soft_dot_from_dots_np with beta 0), ties by row.
"""
from typing import Dict, Hashable, List, Optional, Sequence, Set

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import catalog_index
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.tokenization.tokenizer import Tokenizer

# Candidate titles per query, and the cycle filter's depth: chosen on held-out train queries
# (docs/rewriting.md, "Choosing the settings (held-out train queries)").
NUM_TITLES = 4
CYCLE_K = 100


def top_rows(query_heads: np.ndarray, items: np.ndarray, n: int,
             batch_size: int = 256) -> np.ndarray:
    """[Q, n] int64 rows of the n items with the highest max-over-heads dot product with each
    query (query_heads [Q, m, d], items [N, d]), best first, ties by row ascending."""
    q = len(query_heads)
    n = min(n, len(items))
    out = np.zeros([q, n], np.int64)
    items = np.asarray(items, np.float32)
    for lo in range(0, q, batch_size):
        heads = np.asarray(query_heads[lo:lo + batch_size], np.float32)
        # One [batch, N] matrix at a time (not [batch, N, heads]): memory by catalog size.
        scores = heads[:, 0] @ items.T
        for h in range(1, heads.shape[1]):
            np.maximum(scores, heads[:, h] @ items.T, out=scores)
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < len(items) else \
            np.broadcast_to(np.arange(len(items)), scores.shape)
        for i, rows in enumerate(part):
            # The n-th best score may be tied beyond the partition: take every tied row.
            cut = scores[i, rows].min()
            tied = np.flatnonzero(scores[i] >= cut)
            order = np.lexsort((tied, -scores[i, tied]))
            out[lo + i] = tied[order[:n]]
    return out


def items_of_title(items: Sequence[Hashable], titles: Sequence[str]) -> Dict[str, Set]:
    """title -> the items (ids, or rows given range(N)) with that title (several items may
    share one)."""
    out: Dict[str, Set] = {}
    for item, title in zip(items, titles):
        out.setdefault(title, set()).add(item)
    return out


class DenseTitleSource:
    """The top catalog titles of queries by a trained DPSR model and its index build's item
    embeddings (`dpsr index` saves them beside the index)."""

    def __init__(self, model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                 checkpoint: Optional[str] = None):
        self.model_config, spec = model_dir_lib.load_model_config(model_dir)
        self.spec = layout_lib.load_layout_spec(layout_dir) if layout_dir else spec
        item_ids = layout_lib.load_item_ids(self.spec)
        self.items = catalog_index.catalog_embeddings_by_row(index_dir, item_ids)
        if self.items.shape[1] != self.model_config.embedding_dim:
            raise ValueError(f"{index_dir} holds {self.items.shape[1]}-d item embeddings; "
                             f"{model_dir} embeds in {self.model_config.embedding_dim} "
                             f"dimensions: build the index with this model")
        self.titles = layout_lib.read_lines(self.spec.path(layout_lib.ITEM_TITLES))
        self.item_ids = item_ids
        self._tokenizer = Tokenizer(self.spec.tokenizer_config)
        self._model_dir, self._checkpoint = model_dir, checkpoint

    def query_heads(self, queries: Sequence[str]) -> np.ndarray:
        """[Q, m, d] the query tower's heads of anonymous queries (no user)."""
        values, splits = self._tokenizer.tokenize(list(queries))
        with CheckpointEmbedder(self._model_dir, self._checkpoint, self.model_config,
                                self.spec) as embedder:
            return embedder.embed_queries(values, splits)

    def top_titles(self, queries: Sequence[str], n: int) -> List[List[str]]:
        """Per query, the titles of its n best items, best first."""
        if n < 1:
            raise ValueError(f"the number of candidate titles must be >= 1, got {n}")
        rows = top_rows(self.query_heads(queries), self.items, n)
        return [[self.titles[r] for r in row] for row in rows]

    def items_of_title(self) -> Dict[str, Set[str]]:
        """title -> ids of the catalog items with that title (lexical_filter.lexical_cycle_fn)."""
        return items_of_title(self.item_ids, self.titles)
