"""Every candidate fusion's per-request metrics on one pair of lists: the fusion choice's fast path.

The reference (candidate_values_reference) fuses each candidate's top k (fused_rows, = fuse_np)
and scores it with metrics.per_request_metrics, whose per-request Python loop looks each of the
k fused items up. Both steps redo per candidate what does not depend on the fusion: the grouping
of the two lists by item (FusionPlan), and where each relevant item sits in them.

candidate_values does that part once per chunk of requests and, per candidate, only what the
fusion changes: the fused score of every item (FusionPlan's arithmetic, the same float32 sums)
and the fused rank of each relevant item found in either list, = the number of items before it
in fuse_np's order (fused score descending, then first appearance). The metrics follow from
those ranks alone: Recall@k counts the relevant items ranked below k, nDCG@10 and MRR@10 read
the top ten's. The values equal the reference's (tests/evaluation/test_fusion_scores.py); rows
where a list holds an item twice, or a fused score is not finite, are scored by the reference.
"""
from typing import Dict, List, Sequence

import numpy as np

from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.search.fused_rows import RankedLists, fused_rows, fused_scored_rows
from dpsr_tf.search.fusion import FusionConfig

NDCG_K = 10
MRR_K = 10


def candidate_values_reference(dense_scores, dense_rows, lexical_scores, lexical_rows, eval_set,
                               k: int, candidates: Sequence[FusionConfig],
                               recall_ks: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    """Per candidate, per_request_metrics of its fused top k: {metric: [Q] float64}."""
    return [metrics_lib.per_request_metrics(
        fused_rows(dense_scores, dense_rows, lexical_scores, lexical_rows, k, cfg),
        eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains,
        recall_ks, NDCG_K, MRR_K) for cfg in candidates]


class _Relevant:
    """The split's relevant items as per_request_metrics reads them: one entry per (request,
    item) with the item's last gain (its dict), kept when the gain is > 0; the denominators."""

    def __init__(self, eval_set, need: int):
        splits = np.asarray(eval_set.relevant_splits, np.int64)
        rows = np.asarray(eval_set.relevant_rows, np.int64)
        gains = np.asarray(eval_set.relevant_gains)
        self.splits, self.rows, self.gains = splits, rows, gains
        self.counts = np.diff(splits)
        empty = np.flatnonzero(self.counts == 0)
        if len(empty):
            raise ValueError(f"request {empty[0]} has no relevant item; leave it out")
        request = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        order = np.lexsort((np.arange(len(rows)), rows, request))
        request, item = request[order], rows[order]
        gain = gains[order].astype(np.float64)
        last = np.ones(len(item), bool)
        last[:-1] = (request[1:] != request[:-1]) | (item[1:] != item[:-1])
        keep = last & (gain > 0)
        self.request, self.item, self.gain = request[keep], item[keep], gain[keep]
        discounts = 1.0 / np.log2(np.arange(2, need + 2))
        self.ideal = np.empty(len(self.counts))
        for i in range(len(self.counts)):     # per_request_metrics' expression, request by request
            ideal = np.sort(gains[splits[i]:splits[i + 1]].astype(np.float64))[::-1][:NDCG_K]
            self.ideal[i] = (ideal * discounts[:len(ideal)]).sum()
        self.discounts = discounts


def _keys(rows: np.ndarray, span: int) -> np.ndarray:
    """[B * K] int64 (request, item) keys of a list's entries, request-major (padding: the
    request's key span - 1, past its items)."""
    offset = np.arange(len(rows), dtype=np.int64)[:, None] * span
    return (np.where(rows >= 0, rows, span - 1) + offset).ravel()


def _find(keys: np.ndarray, order: np.ndarray, targets: np.ndarray):
    """(found [T] bool, flat position in keys [T]) of each target among keys (order: keys'
    argsort)."""
    ordered = keys[order]
    pos = np.minimum(np.searchsorted(ordered, targets), keys.size - 1)
    return ordered[pos] == targets, order[pos]


class _ListPair(RankedLists):
    """What scoring fusions of one chunk of requests needs that no fusion changes: RankedLists,
    the lexical entry of each dense entry's item, the lexical entries whose item the dense list
    lacks, and the requests with an item twice in one list (FusionPlan leaves those to fuse_np:
    here the reference scores them)."""

    def __init__(self, dense_scores, dense_rows, lexical_scores, lexical_rows, span: int):
        super().__init__(dense_scores, dense_rows, lexical_scores, lexical_rows)
        self.rows, self.kd = self.dense_rows.shape
        self.span = span
        self.d_keys, self.l_keys = _keys(self.dense_rows, span), _keys(self.lexical_rows, span)
        self.d_order = np.argsort(self.d_keys, kind="stable")
        self.l_order = np.argsort(self.l_keys, kind="stable")
        bad = set()
        for keys, order, valid in ((self.d_keys, self.d_order, self.dv),
                                   (self.l_keys, self.l_order, self.lv)):
            ordered = keys[order][valid.ravel()[order]]
            bad.update((ordered[1:][ordered[1:] == ordered[:-1]] // span).tolist())
        self.bad = sorted(bad)
        found, at = _find(self.l_keys, self.l_order, self.d_keys)
        self.has_partner = (found & self.dv.ravel()).reshape(self.dv.shape)
        self.partner = np.where(self.has_partner.ravel(), at, 0)           # flat lexical index
        in_dense, _ = _find(self.d_keys, self.d_order, self.l_keys)
        self.head = np.concatenate([self.dv, self.lv & ~in_dense.reshape(self.lv.shape)], 1)

    def fused(self, cfg: FusionConfig) -> np.ndarray:
        """[B, Kd + Kl] float32 the fused score of each item at its first entry (the dense
        list's, else the lexical list's; self.head): FusionPlan.scored_rows' float32 sums."""
        dc, lc = self.contributions(cfg)
        partner = lc.ravel()[self.partner].reshape(dc.shape)
        dense = np.where(self.has_partner, (dc + partner).astype(np.float32), dc)
        return np.concatenate([dense, lc], axis=1)

    def locate(self, request: np.ndarray, item: np.ndarray):
        """(found, column in [dense | lexical]) of each (request, item) among the items'
        first entries."""
        targets = request * self.span + item
        in_dense, at = _find(self.d_keys, self.d_order, targets)
        in_lexical, at_l = _find(self.l_keys, self.l_order, targets)
        kl = self.lexical_rows.shape[1]
        col = np.where(in_dense, at - request * self.kd, self.kd + at_l - request * kl)
        return in_dense | in_lexical, col


def candidate_values(dense_scores, dense_rows, lexical_scores, lexical_rows, eval_set, k: int,
                     candidates: Sequence[FusionConfig], recall_ks: Sequence[int],
                     chunk: int = 2048) -> List[Dict[str, np.ndarray]]:
    """candidate_values_reference's values (module docstring), the lists grouped once.

    Args:
      dense_scores, dense_rows: [Q, Kd] the dense list of every request, best first, -1 pads.
      lexical_scores, lexical_rows: [Q, Kl] the lexical list, the same.
      eval_set: the split's relevant items (relevant_splits, relevant_rows, relevant_gains).
      k: the fused list's length.
      candidates: the fusions (validated by the caller).
      recall_ks: Recall cut-offs.

    Returns:
      per candidate {"recall@k": [Q] float64, ..., "ndcg@10": [Q], "mrr@10": [Q]}.
    """
    q = len(dense_rows)
    if q == 0:
        raise ValueError("no requests to evaluate (no query with a relevant item)")
    need = min(max(list(recall_ks) + [NDCG_K, MRR_K]), k)
    rel = _Relevant(eval_set, need)
    out = [{**{f"recall@{c}": np.zeros(q) for c in recall_ks},
            f"ndcg@{NDCG_K}": np.zeros(q), f"mrr@{MRR_K}": np.zeros(q)} for _ in candidates]
    top_ndcg, top_mrr = min(NDCG_K, need), min(MRR_K, need)
    span = int(max(np.max(dense_rows, initial=-1), np.max(lexical_rows, initial=-1),
                   rel.item.max(initial=-1))) + 2
    for lo in range(0, q, chunk):
        hi = min(q, lo + chunk)
        pair = _ListPair(dense_scores[lo:hi], dense_rows[lo:hi], lexical_scores[lo:hi],
                         lexical_rows[lo:hi], span)
        rows = pair.rows
        # Where each relevant item's first entry sits in its request's lists, if anywhere.
        a, b = np.searchsorted(rel.request, [lo, hi])
        request, item, gain = rel.request[a:b] - lo, rel.item[a:b], rel.gain[a:b]
        found, col = pair.locate(request, item)
        request, gain, col = request[found], gain[found], col[found]
        heads_of = pair.head[request]                                   # [R, Kd + Kl]
        earlier = np.arange(pair.head.shape[1])[None, :] < col[:, None]
        for values, cfg in zip(out, candidates):
            fused = pair.fused(cfg)
            fallback = set(pair.bad) | set(np.flatnonzero(
                ~np.isfinite(np.where(pair.head, fused, 0)).all(axis=1)).tolist())
            score = fused[request, col][:, None]
            others = fused[request]
            # fuse_np's order: fused score descending, then first appearance.
            before = heads_of & ((others > score) | ((others == score) & earlier))
            rank = before.sum(axis=1)
            for cut in recall_ks:
                hit = rank < min(cut, need)
                values[f"recall@{cut}"][lo:hi] = (np.bincount(request[hit], minlength=rows)
                                                  / rel.counts[lo:hi])
            top = rank < top_ndcg
            hit_gains = np.zeros([rows, top_ndcg])
            hit_gains[request[top], rank[top]] = gain[top]
            values[f"ndcg@{NDCG_K}"][lo:hi] = ((hit_gains * rel.discounts[:top_ndcg]).sum(axis=1)
                                               / rel.ideal[lo:hi])
            best = np.full(rows, np.iinfo(np.int64).max)
            top = rank < top_mrr
            np.minimum.at(best, request[top], rank[top])
            values[f"mrr@{MRR_K}"][lo:hi] = np.where(
                best < top_mrr, 1.0 / (np.minimum(best, top_mrr) + 1), 0.0)
            if fallback:
                _score_by_reference(values, sorted(fallback), lo, pair, rel, k, cfg, recall_ks)
    return out


def _score_by_reference(values, local_rows, lo, pair, rel, k, cfg, recall_ks) -> None:
    """Overwrites the values of the chunk's `local_rows` with the reference's."""
    idx = np.asarray(local_rows, np.int64)
    fused = fused_rows(pair.dense_scores[idx], pair.dense_rows[idx], pair.lexical_scores[idx],
                       pair.lexical_rows[idx], k, cfg)
    starts, ends = rel.splits[lo + idx], rel.splits[lo + idx + 1]
    splits = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    picked = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
    got = metrics_lib.per_request_metrics(fused, splits, rel.rows[picked], rel.gains[picked],
                                          recall_ks, NDCG_K, MRR_K)
    for name, v in got.items():
        values[name][lo + idx] = v


def _in_lists(items: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """[B, k] whether each item (-1 pads: False) is among the valid entries (>= 0) of its row
    of lists [B, n]."""
    items, lists = np.asarray(items, np.int64), np.asarray(lists, np.int64)
    if lists.shape[1] == 0 or items.size == 0:
        return np.zeros(items.shape, bool)
    span = int(max(items.max(initial=-1), lists.max(initial=-1))) + 2
    offset = np.arange(len(items), dtype=np.int64)[:, None] * span
    keys = np.sort((np.where(lists >= 0, lists, span - 1) + offset).ravel())
    target = items + offset
    pos = np.minimum(np.searchsorted(keys, target), keys.size - 1)
    return (keys[pos] == target) & (items >= 0)


def fused_with_source(dense_scores, dense_rows, lexical_scores, lexical_rows, k: int,
                      cfg: FusionConfig):
    """fuse_np's three outputs for int rows (-1 pads), for all requests at once: fused scores
    and rows (fused_scored_rows) and each result's source (1 dense, 2 lexical, 3 both, 0 pads:
    the lists that hold the item)."""
    scores, rows = fused_scored_rows(dense_scores, dense_rows, lexical_scores, lexical_rows, k,
                                     cfg)
    source = (_in_lists(rows, dense_rows).astype(np.int32)
              + 2 * _in_lists(rows, lexical_rows).astype(np.int32))
    return scores, rows, source
