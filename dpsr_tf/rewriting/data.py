"""Training pairs of the rewriter: (query, clicked title) from a prepared layout.

A pair is a positive interaction (a click or a human positive; human negatives are left out)
of the layout's "train" split: the logged query text and the item's title. Pairs are
deduplicated; the order is the split's record order, shuffled in the input pipeline.
"""
import dataclasses
import hashlib
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.rewriting import units as units_lib
from dpsr_tf.rewriting.table import normalize_query


@dataclasses.dataclass
class Pairs:
    """queries[i] was answered by a click on titles[i]."""
    queries: List[str]
    titles: List[str]

    def __len__(self) -> int:
        return len(self.queries)


HOLDOUT_SALT = "dpsr-rewriter-holdout:"


def in_holdout(query: str, percent: int) -> bool:
    """Whether a query is in the rewriter's held-out part of the train split: md5 of the salted,
    normalized query (dpsr_tf/rewriting/table.normalize_query), as an integer, mod 100 is below
    percent. The salt makes this split independent of the layout's own train/eval split
    (md5(query) % 10), so the held-out queries are a uniform sample of the train queries. They
    tune rewriting (filters, merge) without touching the eval split's queries."""
    if percent <= 0:
        return False
    digest = hashlib.md5((HOLDOUT_SALT + normalize_query(query)).encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < percent


def load_pairs(layout_dir: str, split: str = "train", min_gain: float = 0.0,
               holdout_percent: int = 0, holdout: bool = False) -> Pairs:
    """Distinct (query, title) positive pairs of a split whose gain is >= min_gain.

    holdout_percent > 0 splits the queries by in_holdout: holdout=False keeps the pairs of the
    other queries (what the rewriter learns from), holdout=True only those of held-out ones.

    Raises:
      ValueError: the split has no positive pair.
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    rec = layout_lib.read_records(spec, split)
    keep = (rec["label_kind"] != 2) & (rec["gain"] >= np.float32(min_gain) - 1e-4)
    queries = layout_lib.load_queries(spec)
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    seen, out_q, out_t = set(), [], []
    for q, i in zip(rec["query_row"][keep], rec["item_row"][keep]):
        key = (int(q), int(i))
        if key not in seen and queries[q].strip() and titles[i].strip() and (
                not holdout_percent or in_holdout(queries[q], holdout_percent) == holdout):
            seen.add(key)
            out_q.append(queries[q])
            out_t.append(titles[i])
    if not out_q:
        raise ValueError(f"{layout_dir}: split {split!r} has no positive (query, item) pair "
                         f"with gain >= {min_gain}; a rewriter needs clicks to learn from")
    return Pairs(out_q, out_t)


def encode_pairs(pairs: Pairs, vocab: units_lib.UnitVocab, query_len: int,
                 title_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """([N, query_len], [N, title_len]) int32 unit ids (EOS-terminated, PAD-padded)."""
    return vocab.encode(pairs.queries, query_len), vocab.encode(pairs.titles, title_len)


def input_fn(queries: np.ndarray, titles: np.ndarray, batch_size: int, seed: int,
             repeat: bool = True):
    """An Estimator input_fn over encoded pairs: shuffled (seeded), batched, repeated."""
    def fn():
        ds = tf.data.Dataset.from_tensor_slices({"query": queries, "title": titles})
        if repeat:
            ds = ds.shuffle(len(queries), seed=seed, reshuffle_each_iteration=True).repeat()
        return ds.batch(batch_size, drop_remainder=repeat).prefetch(2)
    return fn
