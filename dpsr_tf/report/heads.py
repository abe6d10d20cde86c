"""Which query head finds what: per-head usage and the queries whose heads disagree most.

Head h "wins" an item for a request when e^h . g is the largest of the request's m head
scores (the first head on a tie): the head the servable's max-over-heads merge reports in its
`heads` output. Everything here is NumPy over embeddings the caller computed once.
"""
from typing import Dict, List, Sequence

import numpy as np


def winning_heads(request_heads: np.ndarray, item_emb: np.ndarray, request_idx: np.ndarray,
                  item_rows: np.ndarray) -> np.ndarray:
    """Head that wins each (request, item) pair.

    Args:
      request_heads: [Q, m, d] float32 query heads of the requests.
      item_emb: [N, d] float32 item embeddings.
      request_idx: [P] int64 request of each pair.
      item_rows: [P] int64 item row of each pair.

    Returns:
      [P] int64 head index in [0, m).
    """
    if len(request_idx) == 0:
        return np.zeros([0], np.int64)
    dots = np.einsum("pmd,pd->pm", request_heads[request_idx], item_emb[item_rows])
    return np.argmax(dots, axis=1).astype(np.int64)


def _shares(heads: np.ndarray, num_heads: int) -> List[float]:
    counts = np.bincount(heads, minlength=num_heads).astype(np.float64)
    return (counts / max(1, len(heads))).tolist()


def head_usage(request_heads: np.ndarray, item_emb: np.ndarray, retrieved: np.ndarray,
               relevant_splits: np.ndarray, relevant_rows: np.ndarray,
               cuts: Sequence[int] = (10, 100)) -> Dict[str, object]:
    """Share of results and of clicked items won by each head.

    Args:
      request_heads: [Q, m, d]; item_emb: [N, d].
      retrieved: [Q, K] int64 item rows of each request's ranking, best first.
      relevant_splits: [Q + 1] int64; relevant_rows: [R] int64 (the clicked items).
      cuts: result cut-offs (each <= K is reported).

    Returns:
      {"num_heads": m, "results@k": [m] shares of the top-k results, "clicked": [m] shares of
       the clicked (relevant) items, "clicked_pairs": R, "requests": Q}.
    """
    q, m = request_heads.shape[0], request_heads.shape[1]
    out: Dict[str, object] = {"num_heads": int(m), "requests": int(q)}
    for cut in cuts:
        if cut > retrieved.shape[1]:
            continue
        rows = retrieved[:, :cut]
        req = np.repeat(np.arange(q, dtype=np.int64), rows.shape[1])
        out[f"results@{cut}"] = _shares(
            winning_heads(request_heads, item_emb, req, rows.reshape(-1)), m)
    req = np.repeat(np.arange(q, dtype=np.int64), np.diff(relevant_splits))
    out["clicked"] = _shares(winning_heads(request_heads, item_emb, req, relevant_rows), m)
    out["clicked_pairs"] = int(len(relevant_rows))
    return out


def per_head_top_items(request_heads: np.ndarray, item_emb: np.ndarray, request: int,
                       k: int) -> List[List[int]]:
    """[m] lists of the k item rows each head of one request scores highest (head alone)."""
    dots = request_heads[request] @ item_emb.T                               # [m, N]
    k = min(k, item_emb.shape[0])
    return [np.argsort(-row, kind="stable")[:k].astype(int).tolist() for row in dots]


def pick_polysemous(request_heads: np.ndarray, item_emb: np.ndarray, queries: Sequence[str],
                    count: int, k: int = 10, wanted: Sequence[str] = ()) -> List[int]:
    """Requests to show on the map: the wanted query texts, else the heads' largest disagreement.

    Disagreement of a request = 1 - mean pairwise Jaccard overlap of its heads' top-k lists;
    one request per distinct query text, most disagreeing first (ties: earlier request).
    With one head, the first `count` distinct queries.

    Raises:
      ValueError: a wanted query text that no request of the split has.
    """
    if wanted:
        first = {}
        for i, text in enumerate(queries):
            first.setdefault(text, i)
        missing = [w for w in wanted if w not in first]
        if missing:
            raise ValueError(f"--queries {missing} are not queries of the evaluated split; "
                             f"e.g. {list(first)[:5]}")
        return [first[w] for w in wanted]
    m = request_heads.shape[1]
    scores = np.zeros(len(queries))
    k = min(k, item_emb.shape[0])
    if m > 1:
        for lo in range(0, len(queries), 256):
            dots = np.einsum("bmd,nd->bmn", request_heads[lo:lo + 256], item_emb)  # [b, m, N]
            tops = np.argpartition(-dots, k - 1, axis=2)[..., :k] if k < dots.shape[2] else \
                np.broadcast_to(np.arange(dots.shape[2]), dots.shape)
            for j, request_tops in enumerate(tops):
                sets = [set(t.tolist()) for t in request_tops]
                overlaps = [len(sets[a] & sets[b]) / len(sets[a] | sets[b])
                            for a in range(m) for b in range(a + 1, m)]
                scores[lo + j] = 1.0 - float(np.mean(overlaps))
    order = np.argsort(-scores, kind="stable")
    chosen, seen = [], set()
    for i in order:
        if queries[i] not in seen:
            seen.add(queries[i])
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return chosen


def sense_panel(request_heads: np.ndarray, item_emb: np.ndarray, request: int, k: int,
                sense_rows: Sequence[np.ndarray]) -> Dict[str, List[List[int]]]:
    """Each head's top k items of one request, each item labelled with its sense.

    Args:
      request_heads: [Q, m, d] float32; item_emb: [N, d] float32.
      request: the request (a polysemous query).
      k: items per head.
      sense_rows: per sense, the int64 item rows of that sense (disjoint).

    Returns:
      {"heads": [m][k] item rows (per_head_top_items), "senses": [m][k] the sense index of
       each item, -1 for an item of no sense}.
    """
    lists = per_head_top_items(request_heads, item_emb, request, k)
    sense_of = {}
    for s, rows in enumerate(sense_rows):
        for row in np.asarray(rows).tolist():
            sense_of.setdefault(int(row), s)
    return {"heads": lists, "senses": [[sense_of.get(r, -1) for r in rows] for rows in lists]}
