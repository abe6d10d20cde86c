"""The "has a lexical hit" filter of rewrites, over an index build's lexical index."""
from typing import Callable, List

import numpy as np

from dpsr_tf.indexing import index_layout
from dpsr_tf.indexing.lexical_index import LexicalSearcher


def lexical_hit_fn(index_dir: str) -> Callable[[List[str]], np.ndarray]:
    """texts -> [n] bool: the build's lexical index scores at least one item above 0."""
    manifest = index_layout.read_manifest(index_dir)
    ids = []
    for info in manifest.shards:
        _, ids_file = manifest.shard_paths(index_dir, info.shard)
        ids.extend(str(i) for i in index_layout.read_id_map(ids_file,
                                                             expected_count=info.num_items))
    searcher = LexicalSearcher(index_dir, ids)

    def has_hits(texts):
        scores, _ = searcher.search(texts, 1)
        return np.isfinite(scores[:, 0]) & (scores[:, 0] > 0)
    return has_hits
