"""The lexical filters of rewrites, over an index build's lexical index: "has a lexical hit",
query consistency (a rewrite's top k shares items with the query's own top k) and the cycle
(a rewrite's top k holds the catalog item whose title it was decoded from)."""
from typing import Callable, Dict, List, Sequence, Set, Tuple

import numpy as np

from dpsr_tf.indexing import index_layout
from dpsr_tf.indexing.lexical_index import LexicalSearcher


def _searcher_and_ids(index_dir: str) -> Tuple[LexicalSearcher, List[str]]:
    manifest = index_layout.read_manifest(index_dir)
    ids = []
    for info in manifest.shards:
        _, ids_file = manifest.shard_paths(index_dir, info.shard)
        ids.extend(str(i) for i in index_layout.read_id_map(ids_file,
                                                             expected_count=info.num_items))
    return LexicalSearcher(index_dir, ids), ids


def _searcher(index_dir: str) -> LexicalSearcher:
    return _searcher_and_ids(index_dir)[0]


def shared_counts(query_rows: np.ndarray, rewrite_rows: np.ndarray, k: int) -> np.ndarray:
    """[n] how many items of rewrite_rows[j, :k] are in query_rows[:k] (-1 pads are no item).

    Args:
      query_rows: [K] the query's own lexical list (item rows, best first, -1 pads).
      rewrite_rows: [n, K] each rewrite's lexical list.
    """
    own = set(int(r) for r in query_rows[:k] if r >= 0)
    return np.array([sum(1 for r in row[:k] if r >= 0 and int(r) in own)
                     for row in rewrite_rows], np.int64)


def lexical_shared_fn(index_dir: str, k: int) -> Callable[[str, Sequence[str]], np.ndarray]:
    """(query, rewrites) -> [n] shared_counts of the rewrites' lexical top k with the query's."""
    searcher = _searcher(index_dir)

    def shared(query, texts):
        _, rows = searcher.search([query] + list(texts), k)
        return shared_counts(rows[0], rows[1:], k)
    return shared


def lexical_hit_fn(index_dir: str) -> Callable[[List[str]], np.ndarray]:
    """texts -> [n] bool: the build's lexical index scores at least one item above 0."""
    searcher = _searcher(index_dir)

    def has_hits(texts):
        scores, _ = searcher.search(texts, 1)
        return np.isfinite(scores[:, 0]) & (scores[:, 0] > 0)
    return has_hits


def lexical_cycle_fn(index_dir: str, k: int, items_of_title: Dict[str, Set[str]]
                     ) -> Callable[[str, Sequence[str]], np.ndarray]:
    """(title, rewrites) -> [n] bool: the rewrite's lexical top k holds an item whose title is
    `title` (items_of_title: title -> item ids, e.g. of the layout's catalog). The cycle
    query -> title -> rewrite -> title: a rewrite that cannot find the item it was decoded
    from says less about it than the title did. A title of no catalog item keeps nothing."""
    searcher, ids = _searcher_and_ids(index_dir)

    def finds(title, texts):
        wanted = items_of_title.get(title, set())
        if not wanted or not texts:
            return np.zeros(len(texts), bool)
        _, rows = searcher.search(list(texts), k)
        return np.array([any(r >= 0 and ids[r] in wanted for r in row) for row in rows], bool)
    return finds
