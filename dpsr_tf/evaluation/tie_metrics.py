"""Recall@k and nDCG@k of ranked lists whose scores tie, in expectation over the tied orders.

A system that gives many items the same score (BM25 on a one-word query against a column of
genre names: every movie of the genre scores alike) hands the evaluation an order it did not
choose: whatever order the index kept the tied items in (item row order, i.e. the order of the
catalog file). metrics.per_request_metrics scores that order as ranked. On MovieLens the
catalog's order is the dataset's movie id order, which follows popularity, so the lexical list
inherits a popularity prior from the file (docs/results.md, "Tied scores").

These functions score the list as the expectation over every order of each group of equal
scores (McSherry and Najork, "Computing information retrieval performance measures efficiently
in the presence of tied scores", ECIR 2008): a group of g items holding positions [a, b) puts
each of its items at each of those positions with probability 1 / g, so by linearity

  E[hits in the top k] = sum over groups of (relevant items of the group) * |[a, b) and [0, k)| / g
  E[DCG@k]             = sum over groups of (mean gain of the group) * sum_{p in [a, b), p < k}
                         1 / log2(p + 2)

A list without ties scores exactly as per_request_metrics. Ties are judged among the entries
the list holds; a tie group cut by the list's end is taken as the entries before the cut. With
`catalog_size`, a list shorter than its cut-offs (a lexical index returns the items a query
matches, no more) is followed by the rest of the catalog as one more tie group: the items the
query does not match all score 0, so their order is the catalog's, and each lands in any of the
positions after the list with equal chance.
"""
from typing import Dict, Optional, Sequence

import numpy as np


def per_request_tie_metrics(retrieved: np.ndarray, scores: np.ndarray,
                            relevant_splits: np.ndarray, relevant_rows: np.ndarray,
                            relevant_gains: np.ndarray,
                            recall_ks: Sequence[int] = (10, 100, 1000),
                            ndcg_k: int = 10,
                            catalog_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """metrics.per_request_metrics' recall@k and nDCG@k, in expectation over tied orders.

    Args:
      retrieved: [Q, K] int64 item rows, best first, -1 pads (after the valid entries).
      scores: [Q, K] the scores the list was ranked by (non-increasing over valid entries;
        float equality defines a tie).
      relevant_splits, relevant_rows, relevant_gains: as per_request_metrics.
      catalog_size: the catalog's items; the ones a row lacks tie after its last entry
        (module docstring). None: the list is all there is.

    Returns:
      {"recall@k": [Q] float64, f"ndcg@{ndcg_k}": [Q] float64}.

    Raises:
      ValueError: no requests, a request without a relevant item, mismatched shapes or
        scores that increase along a row.
    """
    retrieved = np.asarray(retrieved)
    scores = np.asarray(scores)
    if retrieved.shape != scores.shape:
        raise ValueError(f"retrieved {retrieved.shape} and scores {scores.shape} differ in shape")
    q, width = retrieved.shape if retrieved.ndim == 2 else (0, 0)
    if q == 0:
        raise ValueError("no requests to evaluate (no query with a relevant item)")
    deepest = max(list(recall_ks) + [ndcg_k])
    discounts = 1.0 / np.log2(np.arange(2, max(width, deepest) + 2))
    cum = np.concatenate([[0.0], np.cumsum(discounts)])    # cum[p]: discounts of positions < p
    recalls = {k: np.zeros(q) for k in recall_ks}
    ndcg = np.zeros(q)
    for i in range(q):
        rows = relevant_rows[relevant_splits[i]:relevant_splits[i + 1]]
        gains = relevant_gains[relevant_splits[i]:relevant_splits[i + 1]].astype(np.float64)
        if len(rows) == 0:
            raise ValueError(f"request {i} has no relevant item; leave it out")
        valid = retrieved[i] >= 0
        n = int(valid.sum())
        if not valid[:n].all():
            raise ValueError(f"request {i}: padding (-1) before a valid entry")
        s = scores[i, :n].astype(np.float64)
        if n > 1 and np.any(s[1:] > s[:-1]):
            raise ValueError(f"request {i}: scores increase along the list; rank it first")
        gain_of = dict(zip(rows.tolist(), gains.tolist()))
        hit = np.array([gain_of.get(r, 0.0) for r in retrieved[i, :n].tolist()])
        # Groups of equal scores: [starts[j], ends[j]), each with its relevant items and gain.
        starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]])) if n else (
            np.zeros(0, np.int64))
        ends = np.append(starts[1:], n).astype(np.int64) if n else np.zeros(0, np.int64)
        rel_in = np.add.reduceat((hit > 0).astype(np.float64), starts) if n else np.zeros(0)
        gain_in = np.add.reduceat(hit, starts) if n else np.zeros(0)
        # The catalog's other items: one more group [n, catalog_size) after the list. Only a
        # list shorter than a cut-off needs it (module docstring).
        if catalog_size is not None and n < min(int(catalog_size), deepest):
            listed = set(retrieved[i, :n].tolist())
            missing = [g for r, g in gain_of.items() if r not in listed]
            starts = np.append(starts, n)
            ends = np.append(ends, int(catalog_size))
            rel_in = np.append(rel_in, len(missing))
            gain_in = np.append(gain_in, sum(missing))
        size = (ends - starts).astype(np.float64)
        for k in recall_ks:
            inside = np.clip(np.minimum(ends, k) - starts, 0, None)
            recalls[k][i] = float((rel_in * inside / size).sum()) / len(rows)
        top = np.minimum(ends, ndcg_k)
        disc = np.where(top > starts, cum[np.maximum(top, starts)] - cum[starts], 0.0)
        ideal = np.sort(gains)[::-1][:ndcg_k]
        ndcg[i] = float((gain_in / size * disc).sum()) / float(
            (ideal / np.log2(np.arange(2, len(ideal) + 2))).sum())
    out = {f"recall@{k}": v for k, v in recalls.items()}
    out[f"ndcg@{ndcg_k}"] = ndcg
    return out
