"""fuse_np's fused rows for many requests at once: the evaluation's fast path.

fuse_np (dpsr_tf/search/fusion.py) is the rule written plainly, one request and one item at a
time; choosing a fusion (dpsr_tf/evaluation/fusion_choice.py) or cross-validating one
(crossval_hybrid.py) fuses thousands of requests with each of a dozen candidates, where that
loop takes minutes. FusionPlan does the part that does not depend on the fusion once (both
lists' entries grouped by item, each list's competition ranks), then each candidate's rows
with whole-array operations; tests/search/test_fused_rows.py checks it equal to fuse_np.
"""
import numpy as np

from dpsr_tf.search import fusion
from dpsr_tf.search.fusion import FusionConfig, fuse_np


class RankedLists:
    """Both lists as every fusion of them reads them: float32 scores and int64 rows of the dense
    and lexical lists [B, K], their valid entries (rows >= 0) and each list's competition ranks
    (fusion.tie_ranks_np), computed once."""

    def __init__(self, dense_scores, dense_rows, lexical_scores, lexical_rows):
        self.dense_scores = np.asarray(dense_scores, np.float32)
        self.lexical_scores = np.asarray(lexical_scores, np.float32)
        self.dense_rows = np.asarray(dense_rows, np.int64)
        self.lexical_rows = np.asarray(lexical_rows, np.int64)
        self.dv, self.lv = self.dense_rows >= 0, self.lexical_rows >= 0
        self.d_ranks = fusion.tie_ranks_np(self.dense_scores, self.dv)
        self.l_ranks = fusion.tie_ranks_np(self.lexical_scores, self.lv)

    def contributions(self, cfg: FusionConfig):
        """([B, Kd], [B, Kl]) float32 each entry's contribution to its item's fused score:
        fusion._contributions_np's arithmetic, rrf from the ranks computed once."""
        return (_contributions(self.dense_scores, self.d_ranks, self.dv, cfg.dense_weight, cfg),
                _contributions(self.lexical_scores, self.l_ranks, self.lv, cfg.lexical_weight,
                               cfg))


def _contributions(scores, ranks, valid, weight, cfg: FusionConfig) -> np.ndarray:
    if cfg.rule != "rrf":
        # pylint: disable-next=protected-access
        return fusion._contributions_np(scores, valid, weight, cfg)
    out = np.float32(weight) / (np.float32(cfg.rrf_k) + ranks)
    return np.where(valid, out, np.float32(0)).astype(np.float32)


class FusionPlan(RankedLists):
    """What fusing two lists needs that does not depend on the fusion: RankedLists, the entries
    of both lists grouped by item (a stable sort by item row keeps the dense entry first) and
    whether a list holds an item twice."""

    def __init__(self, dense_scores, dense_rows, lexical_scores, lexical_rows):
        super().__init__(dense_scores, dense_rows, lexical_scores, lexical_rows)
        ids = np.concatenate([self.dense_rows, self.lexical_rows], axis=1)
        valid = np.concatenate([self.dv, self.lv], axis=1)
        self.width = ids.shape[1]
        lexical = np.broadcast_to(np.arange(self.width) >= self.dense_rows.shape[1], ids.shape)
        big = np.iinfo(np.int64).max
        keyed = np.where(valid, ids, big)
        self.order = np.argsort(keyed, axis=1, kind="stable")
        self.sid = np.take_along_axis(keyed, self.order, axis=1)
        sl = np.take_along_axis(lexical, self.order, axis=1)
        live = self.sid != big
        same_prev = np.zeros(self.sid.shape, bool)
        same_prev[:, 1:] = live[:, 1:] & (self.sid[:, 1:] == self.sid[:, :-1])
        twice = np.zeros(self.sid.shape, bool)       # an item twice in one list
        twice[:, 1:] = same_prev[:, 1:] & (sl[:, 1:] == sl[:, :-1])
        self.bad = np.flatnonzero(twice.any(axis=1))
        self.has_partner = np.zeros(self.sid.shape, bool)
        self.has_partner[:, :-1] = same_prev[:, 1:]
        self.head = live & ~same_prev
        self.first = np.where(self.head, self.order, self.width)  # first appearance

    def rows(self, k: int, cfg: FusionConfig) -> np.ndarray:
        """[B, k] int64 fused rows (-1 pads), fuse_np's."""
        return self.scored_rows(k, cfg)[1]

    def scored_rows(self, k: int, cfg: FusionConfig):
        """([B, k] float32 fused scores, -inf pads; [B, k] int64 fused rows, -1 pads): fuse_np's
        first two outputs (the scores let an evaluation see the fusion's ties)."""
        contrib = np.concatenate(self.contributions(cfg), axis=1)
        sc = np.take_along_axis(contrib, self.order, axis=1)
        partner = np.zeros(sc.shape, np.float32)
        partner[:, :-1] = sc[:, 1:]
        # fuse_np: fused = float32(0 + dense) then float32(that + lexical); 0 + x == x exactly.
        fused = np.where(self.has_partner, (sc + partner).astype(np.float32), sc)
        key = np.where(self.head, -fused.astype(np.float64), np.inf)
        rank = np.lexsort((self.first, key), axis=1)[:, :k]
        picked = np.take_along_axis(key, rank, axis=1)
        out = np.where(np.isinf(picked), -1, np.take_along_axis(self.sid, rank, axis=1))
        out_scores = np.where(np.isinf(picked), -np.inf, -picked).astype(np.float32)
        if out.shape[1] < k:
            out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
            out_scores = np.pad(out_scores, ((0, 0), (0, k - out_scores.shape[1])),
                                constant_values=-np.inf)
        if len(self.bad):
            bad = fuse_np(self.dense_scores[self.bad], self.dense_rows[self.bad],
                          self.lexical_scores[self.bad], self.lexical_rows[self.bad], k, cfg)
            out_scores[self.bad], out[self.bad] = bad[0], bad[1]
        return out_scores, out


def fused_scored_rows(dense_scores: np.ndarray, dense_rows: np.ndarray,
                      lexical_scores: np.ndarray, lexical_rows: np.ndarray, k: int,
                      cfg: FusionConfig, chunk: int = 2048):
    """fuse_np's fused scores and rows ([B, k] float32, -inf pads; [B, k] int64, -1 pads)
    computed for all requests at once.

    The same contributions (fusion._contributions_np's arithmetic), the same float32 sum
    (dense + lexical) and the same order (fused score descending, then first appearance: dense
    list, then lexical list); fuse_np's per-item Python loop is too slow for every candidate
    fusion over every request of a split. Rows where one list holds an item
    twice (which search_served and the lexical searcher never return) go through fuse_np.
    Requests are fused `chunk` at a time (a plan holds ~10 copies of its lists).
    """
    parts = [FusionPlan(dense_scores[lo:lo + chunk], dense_rows[lo:lo + chunk],
                        lexical_scores[lo:lo + chunk],
                        lexical_rows[lo:lo + chunk]).scored_rows(k, cfg)
             for lo in range(0, len(dense_rows), chunk)]
    if not parts:
        return np.full((0, k), -np.inf, np.float32), np.full((0, k), -1, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fused_rows(dense_scores: np.ndarray, dense_rows: np.ndarray, lexical_scores: np.ndarray,
               lexical_rows: np.ndarray, k: int, cfg: FusionConfig,
               chunk: int = 2048) -> np.ndarray:
    """fuse_np's fused rows ([B, k] int64, -1 pads): fused_scored_rows' rows."""
    return fused_scored_rows(dense_scores, dense_rows, lexical_scores, lexical_rows, k, cfg,
                             chunk)[1]
