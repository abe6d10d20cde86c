"""Category purity@k: how far an embedding's nearest items share the item's category.

Measured on the full-dimensional item embeddings (the vectors the index holds), never on a
2-D map: t-SNE keeps neighbourhoods only roughly and its distances mean little.

For a sampled item i with a known category c_i, NN_k(i) are the k items of the whole catalog
(i itself left out) with the largest cosine similarity to i, ties at the k-th similarity
broken by the lower item row, and

    purity_k(i) = |{j in NN_k(i) : c_j = c_i}| / k          (an unknown c_j never matches)
    chance(i)   = (n_{c_i} - 1) / (N - 1)                   (the expected share for k random
                                                             other items of the catalog)

The report gives the means over the sampled items whose category is known.
"""
from typing import Dict, Optional

import numpy as np

# Sampled rows per similarity block: [block, N] float32 stays small on a large catalog.
_BLOCK = 256


def _check_rows(rows: np.ndarray, n_items: int) -> None:
    if len(rows) and (rows.min() < 0 or rows.max() >= n_items):
        raise ValueError(f"item rows must be in [0, {n_items}), got {rows.min()}..{rows.max()}")


def nearest_items(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """[n, k] int64: the k nearest items (cosine) of each of `rows`, nearest first.

    Args:
      vectors: [N, d] float item embeddings (any norm; a zero row has similarity 0 to all).
      rows: [n] int item rows whose neighbours are wanted.
      k: neighbours per item, 1 <= k <= N - 1.

    The item itself is never its own neighbour; ties are broken by the lower row.

    Raises:
      ValueError: k outside [1, N - 1], or a row outside [0, N).
    """
    vectors = np.asarray(vectors, np.float32)
    rows = np.asarray(rows, np.int64)
    n_items = len(vectors)
    if not 1 <= k <= n_items - 1:
        raise ValueError(f"k must be in [1, {n_items - 1}] (the catalog has {n_items} items), "
                         f"got {k}")
    _check_rows(rows, n_items)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    out = np.zeros([len(rows), k], np.int64)
    for lo in range(0, len(rows), _BLOCK):
        block = rows[lo:lo + _BLOCK]
        sims = unit[block] @ unit.T                                     # [b, N]
        sims[np.arange(len(block)), block] = -np.inf
        # The k-th largest similarity; everything above it is in, the rest of the k go to the
        # lowest rows equal to it (argpartition alone would break ties arbitrarily).
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        for b in range(len(block)):
            above = np.flatnonzero(sims[b] > kth[b])
            tied = np.flatnonzero(sims[b] == kth[b])[:k - len(above)]
            chosen = np.concatenate([above, tied])
            order = np.lexsort((chosen, -sims[b, chosen]))
            out[lo + b] = chosen[order]
    return out


def category_purity(vectors: np.ndarray, categories: np.ndarray, known: np.ndarray,
                    rows: np.ndarray, k: int = 10) -> Dict[str, Optional[float]]:
    """Mean category purity@k and its chance level over the sampled items (module docstring).

    Args:
      vectors: [N, d] float item embeddings of the whole catalog.
      categories: [N] int category id of every item.
      known: [N] bool, False where the category is unknown (never a match; not averaged).
      rows: [n] int sampled item rows.
      k: neighbours per item.

    Returns:
      {"k", "items": sampled items with a known category (the mean's count), "purity": mean
      purity_k, "chance": mean chance level}; purity and chance are None when no sampled item
      has a known category.

    Raises:
      ValueError: mismatched lengths, k outside [1, N - 1], a row outside the catalog.
    """
    categories = np.asarray(categories)
    known = np.asarray(known, bool)
    if not len(vectors) == len(categories) == len(known):
        raise ValueError(f"vectors, categories and known need one entry per item, got "
                         f"{len(vectors)}, {len(categories)}, {len(known)}")
    rows = np.asarray(rows, np.int64)
    _check_rows(rows, len(known))
    rows = rows[known[rows]]
    if not len(rows):
        return {"k": int(k), "items": 0, "purity": None, "chance": None}
    neighbours = nearest_items(vectors, rows, k)
    same = (categories[neighbours] == categories[rows][:, None]) & known[neighbours]
    counts = np.bincount(categories[known].astype(np.int64))
    chance = (counts[categories[rows].astype(np.int64)] - 1) / (len(vectors) - 1)
    return {"k": int(k), "items": int(len(rows)), "purity": float(same.mean()),
            "chance": float(chance.mean())}
