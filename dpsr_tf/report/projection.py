"""A 2-D map of item embeddings: scikit-learn t-SNE over a seeded sample of the catalog.

The items that must appear (those the heads retrieve for the marked queries) are always in
the sample; the rest is a uniform seeded draw up to the requested size.
"""
from typing import Dict, Sequence

import numpy as np


def sample_items(num_items: int, size: int, must: Sequence[int], seed: int) -> np.ndarray:
    """[n] sorted unique item rows: every row of `must`, plus a seeded uniform draw, n <= size
    unless `must` alone is larger."""
    must = np.unique(np.asarray(list(must), np.int64))
    rest = np.setdiff1d(np.arange(num_items, dtype=np.int64), must)
    extra = max(0, min(len(rest), size - len(must)))
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([must, rng.choice(rest, size=extra, replace=False)]))


def tsne_2d(vectors: np.ndarray, seed: int, max_iter: int = 500) -> np.ndarray:
    """[n, d] float32 -> [n, 2] float64 t-SNE coordinates (PCA init, seeded, cosine metric).

    Raises:
      ImportError: scikit-learn is missing (pinned in requirements.txt).
      ValueError: fewer than 3 vectors.
    """
    try:
        from sklearn.manifold import TSNE  # optional: scikit-learn (`dpsr report` only)
    except ImportError as e:
        raise ImportError("the report's t-SNE map needs scikit-learn (pinned in "
                          "requirements.txt): run tools/bootstrap.sh") from e
    n = len(vectors)
    if n < 3:
        raise ValueError(f"a t-SNE map needs at least 3 items, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3.0))
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (optional)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                metric="cosine", random_state=seed, max_iter=max_iter)
    # One OpenMP thread: on shared cores the Barnes-Hut threads' barriers multiply the CPU cost
    # (docs/report.md, "Cost").
    with threadpool_limits(limits=1):
        return tsne.fit_transform(np.asarray(vectors, np.float32)).astype(np.float64)


def category_ids(item_table) -> Dict[str, object]:
    """The category column of the whole catalog: the layout's "category" feature, else its
    first item feature, else none. Returns {"feature": name or None, "ids": [N] int or None,
    "known": [N] bool or None (False where the vocabulary entry is empty), "vocab": list}."""
    names = list(item_table.feature_names)
    name = "category" if "category" in names else (names[0] if names else None)
    if name is None:
        return {"feature": None, "ids": None, "known": None, "vocab": []}
    vocab = item_table.vocabularies[name]
    ids = np.asarray(item_table.feature(name))
    known = np.array([bool(v) for v in vocab])[ids]
    return {"feature": name, "ids": ids, "known": known, "vocab": vocab}


def category_labels(item_table, rows: np.ndarray) -> Dict[str, object]:
    """The category of each sampled item (category_ids' column). Returns {"feature": name or
    None, "labels": [n] str}."""
    cats = category_ids(item_table)
    if cats["feature"] is None:
        return {"feature": None, "labels": ["(none)"] * len(rows)}
    vocab = cats["vocab"]
    return {"feature": cats["feature"],
            "labels": [vocab[i] if vocab[i] else "(unknown)" for i in cats["ids"][rows]]}
