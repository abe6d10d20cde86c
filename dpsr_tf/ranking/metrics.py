"""Per-session ranking metrics of the DPR paper, averaged over sessions.

Session AUC (the paper's "order-based average session AUC"): inside a session, over every pair
of candidates with different labels, the fraction the scores order like the labels (a tie in
score counts 1/2); the mean over sessions that have at least one such pair.

NDCG@k: per session, DCG@k of the candidates sorted by score (gain = label, discount
1 / log2(rank + 1), ties in score broken by shown position) over the DCG@k of the ideal order; the
mean over sessions that have at least two distinct labels (a session with one label is
trivially perfect and says nothing about the ranker).
"""
from typing import Dict, Sequence

import numpy as np


def session_auc_one(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC of one session over pairs with different labels; nan when there is none.

    O(n log n): for each candidate, the candidates with a lower label it outscores, by ranks.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.float64)
    n = len(scores)
    if n < 2:
        return float("nan")
    # For each distinct label level L: pairs (higher in L, lower below L).
    order = np.argsort(labels, kind="stable")
    labels_sorted, scores_sorted = labels[order], scores[order]
    levels, starts = np.unique(labels_sorted, return_index=True)
    if len(levels) < 2:
        return float("nan")
    correct, total = 0.0, 0.0
    for li in range(1, len(levels)):
        lower = np.sort(scores_sorted[:starts[li]])
        end = starts[li + 1] if li + 1 < len(levels) else n
        upper = scores_sorted[starts[li]:end]
        below = np.searchsorted(lower, upper, side="left")
        ties = np.searchsorted(lower, upper, side="right") - below
        correct += below.sum() + 0.5 * ties.sum()
        total += len(upper) * len(lower)
    return float(correct / total)


def ndcg_one(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """NDCG@k of one session (gain = label); nan when all labels are equal."""
    labels = np.asarray(labels, np.float64)
    if len(labels) < 2 or labels.max() == labels.min():
        return float("nan")
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))[:k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (labels[order] * discount[:len(order)]).sum()
    ideal = np.sort(labels)[::-1][:k]
    idcg = (ideal * discount[:len(ideal)]).sum()
    return float(dcg / idcg) if idcg > 0 else float("nan")


def per_session(scores: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                ks: Sequence[int] = (5, 10)) -> Dict[str, np.ndarray]:
    """{"session_auc", "ndcg@k"...}: [S'] float64 values of the sessions that have a pair with
    different labels (the sessions `session_metrics` averages), in session order."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    out = {"session_auc": []}
    out.update({f"ndcg@{k}": [] for k in ks})
    for s in range(len(splits) - 1):
        lo, hi = int(splits[s]), int(splits[s + 1])
        auc = session_auc_one(scores[lo:hi], labels[lo:hi])
        if np.isnan(auc):
            continue
        out["session_auc"].append(auc)
        for k in ks:
            out[f"ndcg@{k}"].append(ndcg_one(scores[lo:hi], labels[lo:hi], k))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def paired_difference(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Dict[str, tuple]:
    """metric -> (mean of a - b over sessions, its standard error) for two `per_session`
    results on the same sessions."""
    out = {}
    for key in a:
        d = a[key] - b[key]
        out[key] = (float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1
                    else float("nan"))
    return out


def session_metrics(scores: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                    ks: Sequence[int] = (5, 10)) -> Dict[str, float]:
    """Session AUC and NDCG@k averaged over sessions.

    Args:
      scores: [C] float scores of every candidate.
      labels: [C] float graded labels.
      splits: [S + 1] int64 session boundaries.
      ks: the NDCG cut-offs.

    Returns:
      {"session_auc", "ndcg@k"..., "sessions" (with a pair), "candidates"}.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    aucs, ndcgs = [], {k: [] for k in ks}
    for s in range(len(splits) - 1):
        lo, hi = int(splits[s]), int(splits[s + 1])
        auc = session_auc_one(scores[lo:hi], labels[lo:hi])
        if np.isnan(auc):
            continue
        aucs.append(auc)
        for k in ks:
            ndcgs[k].append(ndcg_one(scores[lo:hi], labels[lo:hi], k))
    out = {"session_auc": float(np.mean(aucs)) if aucs else float("nan")}
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(ndcgs[k])) if ndcgs[k] else float("nan")
    out["sessions"] = len(aucs)
    out["candidates"] = int(splits[-1])
    return out
