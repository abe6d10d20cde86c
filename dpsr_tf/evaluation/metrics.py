"""Retrieval metrics in NumPy: full-corpus Recall/nDCG/MRR, the paper's Top-k, AUC.

Conventions (the project's dashboard protocol, ../shared/datasets/README.md):
  Recall@k  = |top-k ∩ relevant| / |relevant|, averaged over requests with >= 1 relevant item.
  nDCG@k    = DCG@k / IDCG@k with graded gains: DCG = sum_i gain(item_i) / log2(i + 2).
  MRR@k     = 1 / (1-based rank of the first relevant item in the top k), 0 if none.
  Top-k     = the paper's: the clicked item is within the top k among it and R random items
              (ties count against the clicked item).
  AUC       = probability that a random positive pair scores above a random negative pair
              (ties count one half); the Mann-Whitney statistic.
"""
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

# The key under which results carry per-request metric arrays ({metric: [Q] float64}).
PER_REQUEST = "per_request"


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, N] scores -> [Q, min(k, N)] column indices by descending score (ties: lower index)."""
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        part = np.broadcast_to(np.arange(n), scores.shape)
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def retrieve(score_fn: Callable[[np.ndarray], np.ndarray], num_requests: int, k: int,
             batch_size: int = 256) -> np.ndarray:
    """Brute-force top-k over the whole corpus, in batches of requests.

    Args:
      score_fn: request indices [b] int64 -> scores [b, N] float32 against every item.
      num_requests: Q.
      k: results per request.

    Returns:
      [Q, min(k, N)] int64 item rows by descending score.
    """
    out = []
    for lo in range(0, num_requests, batch_size):
        idx = np.arange(lo, min(num_requests, lo + batch_size), dtype=np.int64)
        out.append(top_k_rows(score_fn(idx), k).astype(np.int64))
    if not out:
        return np.zeros([0, k], np.int64)
    return np.concatenate(out)


def per_request_metrics(retrieved: np.ndarray, relevant_splits: np.ndarray,
                        relevant_rows: np.ndarray, relevant_gains: np.ndarray,
                        recall_ks: Sequence[int] = (10, 100, 1000), ndcg_k: int = 10,
                        mrr_k: int = 10) -> Dict[str, np.ndarray]:
    """Full-corpus metrics of each request's ranked results against graded relevance.

    Args:
      retrieved: [Q, K] int64 item rows, best first; K >= every k asked, or K = the corpus
        size (then a k beyond it counts the whole corpus).
      relevant_splits: [Q + 1] int64; request i's relevant items are
        relevant_rows[relevant_splits[i]:relevant_splits[i + 1]].
      relevant_rows: [R] int64; relevant_gains: [R] float32 (> 0).
      recall_ks, ndcg_k, mrr_k: cut-offs.

    Returns:
      {"recall@k": [Q] float64, "ndcg@10": [Q], "mrr@10": [Q]}, one value per request
      (requests without relevant items must be left out by the caller).
    """
    q = retrieved.shape[0]
    if q == 0:
        raise ValueError("no requests to evaluate (no query with a relevant item)")
    need = min(max(list(recall_ks) + [ndcg_k, mrr_k]), retrieved.shape[1])
    recalls = {k: np.zeros(q) for k in recall_ks}
    ndcg = np.zeros(q)
    mrr = np.zeros(q)
    discounts = 1.0 / np.log2(np.arange(2, need + 2))
    for i in range(q):
        rows = relevant_rows[relevant_splits[i]:relevant_splits[i + 1]]
        gains = relevant_gains[relevant_splits[i]:relevant_splits[i + 1]].astype(np.float64)
        if len(rows) == 0:
            raise ValueError(f"request {i} has no relevant item; leave it out")
        gain_of = dict(zip(rows.tolist(), gains.tolist()))
        hit_gains = np.array([gain_of.get(r, 0.0) for r in retrieved[i, :need].tolist()])
        hits = hit_gains > 0
        for k in recall_ks:
            recalls[k][i] = hits[:k].sum() / len(rows)
        ideal = np.sort(gains)[::-1][:ndcg_k]
        ndcg[i] = (hit_gains[:ndcg_k] * discounts[:len(hit_gains[:ndcg_k])]).sum() / (
            ideal * discounts[:len(ideal)]).sum()
        first = np.flatnonzero(hits[:mrr_k])
        mrr[i] = 1.0 / (first[0] + 1) if len(first) else 0.0
    out = {f"recall@{k}": v for k, v in recalls.items()}
    out[f"ndcg@{ndcg_k}"] = ndcg
    out[f"mrr@{mrr_k}"] = mrr
    return out


def retrieval_metrics(retrieved: np.ndarray, relevant_splits: np.ndarray,
                      relevant_rows: np.ndarray, relevant_gains: np.ndarray,
                      recall_ks: Sequence[int] = (10, 100, 1000), ndcg_k: int = 10,
                      mrr_k: int = 10, with_per_request: bool = False) -> Dict[str, float]:
    """Means over requests of per_request_metrics (same arguments).

    Returns:
      {"recall@k": ..., "ndcg@10": ..., "mrr@10": ..., "requests": Q}; with
      with_per_request, also PER_REQUEST: per_request_metrics' arrays, for paired comparisons
      of systems over the same requests (evaluation/paired.py).
    """
    values = per_request_metrics(retrieved, relevant_splits, relevant_rows, relevant_gains,
                                 recall_ks, ndcg_k, mrr_k)
    out = {name: float(v.mean()) for name, v in values.items()}
    out["requests"] = int(retrieved.shape[0])
    if with_per_request:
        out[PER_REQUEST] = values
    return out


def top_k_among_random(positive_scores: np.ndarray, random_scores: np.ndarray,
                       ks: Sequence[int] = (1, 10)) -> Dict[str, float]:
    """The paper's Top-k.

    Args:
      positive_scores: [n] score of each clicked (query, item) pair.
      random_scores: [n, R] scores of the same query against R random items.
      ks: cut-offs.

    Returns:
      {"top@k": fraction of pairs whose clicked item ranks within the top k among it and the R
      random items (a random item scoring >= the clicked one ranks above it)}.
    """
    beaten = (random_scores >= positive_scores[:, None]).sum(axis=1)
    return {f"top@{k}": float((beaten < k).mean()) for k in ks}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties).

    Args:
      labels: [n] 0/1.
      scores: [n] float.

    Returns:
      AUC in [0, 1], or nan when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average 1-based ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def random_items(num_pairs: int, num_items: int, num_random: int,
                 seed: int) -> np.ndarray:
    """[num_pairs, num_random] int64 uniform item rows (seeded) for Top-k."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, num_items, size=(num_pairs, num_random)).astype(np.int64)


def pair_scores(score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
                request_of_pair: np.ndarray, items: np.ndarray,
                batch_size: int = 1024) -> np.ndarray:
    """Scores of (request, item) pairs in batches: score_fn(requests [b], items [b, c]) ->
    [b, c]. items: [n] or [n, c]. Returns the same shape as items."""
    squeeze = items.ndim == 1
    items2 = items[:, None] if squeeze else items
    out = np.zeros(items2.shape, np.float32)
    for lo in range(0, len(request_of_pair), batch_size):
        hi = min(len(request_of_pair), lo + batch_size)
        out[lo:hi] = score_fn(request_of_pair[lo:hi], items2[lo:hi])
    return out[:, 0] if squeeze else out


def summarize(metrics: Dict[str, float], keys: Tuple[str, ...] = (
        "recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "top@1", "top@10",
        "auc")) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
