"""Independent references for fused rankings: reciprocal rank fusion and retrieval metrics
written out from their definitions, for checking dpsr_tf.search.fusion.fuse_np and
dpsr_tf.evaluation.metrics through the code that uses them."""
from typing import Dict, Sequence

import numpy as np


def rrf_by_hand(dense_scores, dense_rows, lexical_scores, lexical_rows, k: int, rrf_k: float,
                dense_weight: float, lexical_weight: float) -> np.ndarray:
    """[Q, k] fused rows (-1 pads).

    An item's score is the sum, over the lists holding it, of weight / (rrf_k + rank), where
    rank = 1 + the number of the list's valid entries scoring strictly higher (tied entries
    share a rank); float32 as the servable. Ties of the fused score keep the order of first
    appearance, dense list first. Rows < 0 are padding.
    """
    out = np.full((len(dense_rows), k), -1, np.int64)
    for q in range(len(dense_rows)):
        score, first = {}, []
        for scores, rows, weight in ((dense_scores[q], dense_rows[q], dense_weight),
                                     (lexical_scores[q], lexical_rows[q], lexical_weight)):
            valid = [float(s) for s, r in zip(scores, rows) if r >= 0]
            for s, item in zip(scores.tolist(), rows.tolist()):
                if item < 0:
                    continue
                rank = 1 + sum(v > s for v in valid)
                if item not in score:
                    score[item] = np.float32(0)
                    first.append(item)
                score[item] = np.float32(score[item] + np.float32(weight)
                                         / (np.float32(rrf_k) + np.float32(rank)))
        position = {item: i for i, item in enumerate(first)}
        ranked = sorted(first, key=lambda item: (-score[item], position[item]))[:k]
        out[q, :len(ranked)] = ranked
    return out


def blend_by_hand(dense_scores, dense_rows, lexical_scores, lexical_rows, k: int,
                  dense_weight: float, lexical_weight: float) -> np.ndarray:
    """[Q, k] fused rows (-1 pads) of the min-max score blend.

    Each list's valid scores are mapped to (s - min) / (max - min) over the row (all equal:
    1), times the list's weight; an item's score is the sum over the lists holding it (its
    first entry in each list), float32 as the servable. Ties keep the order of first
    appearance, dense list first.
    """
    out = np.full((len(dense_rows), k), -1, np.int64)
    for q in range(len(dense_rows)):
        score, first, seen = {}, [], set()
        for scores, rows, weight, name in ((dense_scores[q], dense_rows[q], dense_weight, "d"),
                                           (lexical_scores[q], lexical_rows[q], lexical_weight,
                                            "l")):
            valid = [np.float32(s) for s, r in zip(scores, rows) if r >= 0]
            lo, hi = (min(valid), max(valid)) if valid else (0, 0)
            for s, item in zip(scores.tolist(), rows.tolist()):
                if item < 0 or (name, item) in seen:
                    continue
                seen.add((name, item))
                norm = (np.float32(1) if hi == lo else
                        np.float32((np.float32(s) - lo) / np.float32(hi - lo)))
                if item not in score:
                    score[item] = np.float32(0)
                    first.append(item)
                score[item] = np.float32(score[item] + np.float32(np.float32(weight) * norm))
        position = {item: i for i, item in enumerate(first)}
        ranked = sorted(first, key=lambda item: (-score[item], position[item]))[:k]
        out[q, :len(ranked)] = ranked
    return out


def fuse_by_hand(dense_scores, dense_rows, lexical_scores, lexical_rows, k: int,
                 cfg) -> np.ndarray:
    """rrf_by_hand or blend_by_hand, by cfg.rule (a FusionConfig)."""
    if cfg.rule == "rrf":
        return rrf_by_hand(dense_scores, dense_rows, lexical_scores, lexical_rows, k,
                           cfg.rrf_k, cfg.dense_weight, cfg.lexical_weight)
    return blend_by_hand(dense_scores, dense_rows, lexical_scores, lexical_rows, k,
                         cfg.dense_weight, cfg.lexical_weight)


def metrics_by_hand(rows: np.ndarray, relevant: Sequence[Sequence[int]],
                    gains: Sequence[Sequence[float]],
                    recall_ks: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per request recall@k (share of the relevant items in the top k) and nDCG@10 (graded
    gains, log2 discount, ideal = the gains sorted)."""
    out = {f"recall@{cut}": [] for cut in recall_ks}
    out["ndcg@10"] = []
    for ranked, rel, gain in zip(rows, relevant, gains):
        gain_of = dict(zip(list(rel), list(gain)))
        for cut in recall_ks:
            out[f"recall@{cut}"].append(len(set(ranked[:cut].tolist()) & set(rel)) / len(rel))
        dcg = sum(gain_of.get(r, 0.0) / np.log2(i + 2) for i, r in enumerate(ranked[:10]))
        ideal = sum(g / np.log2(i + 2) for i, g in enumerate(sorted(gain, reverse=True)[:10]))
        out["ndcg@10"].append(dcg / ideal)
    return {m: np.array(v, np.float64) for m, v in out.items()}


def split_relevance(relevant_splits, relevant_rows, relevant_gains):
    """EvalSet's flat relevance -> per request lists of rows and of gains."""
    rel = [relevant_rows[a:b].tolist() for a, b in zip(relevant_splits[:-1], relevant_splits[1:])]
    gains = [relevant_gains[a:b].astype(np.float64).tolist()
             for a, b in zip(relevant_splits[:-1], relevant_splits[1:])]
    return rel, gains
