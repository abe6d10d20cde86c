"""Would a fusion learned from each list's evidence beat the grid? Tried on `dpsr crossval --hybrid`.

    PYTHONPATH=. python bench/fusion_learned.py /tmp/cv/ml_cv [--negatives=64]

The servable's fusions (search/fusion.py) weigh whole lists by rank (rrf) or min-max score
(blend). This fits a logistic regression over every candidate item of a request (the union of
its served dense and lexical top K) with six features, per list: log((1 + rank) / (n + 2)) with
rank the competition rank (tied scores share one) and n the list's length, the score (dense:
minus the row's lowest; lexical: over the row's best), and presence; 0 for a list lacking the
item. Label: relevant. Every relevant candidate and up to --negatives others per request
(seeded), weighted by how many they stand for. Fold F's model is fitted on the other folds'
lists (cross-fitted, as the hybrid's fusion is chosen) and ranks fold F's union by its logit.

Prints per fold and pooled: the served dense list, the lexical list, the crossval hybrid (its
cross-fitted grid fusion, <fold>/hybrid.json) and the learned fusion, Recall@100 / Recall@1000
/ nDCG@10 both as ranked and tie-aware (evaluation/tie_metrics.py), and the pooled paired
difference learned - hybrid. Reads <dir>/fold_*/hybrid_lists*.npz; minutes per fold.
"""
import argparse
import glob
import json
import os
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import metrics as metrics_lib  # noqa: E402
from dpsr_tf.evaluation import paired  # noqa: E402
from dpsr_tf.evaluation.crossval_hybrid import (FEEDBACK_LISTS_FILE, LISTS_FILE,  # noqa: E402
                                                FoldLists)
from dpsr_tf.evaluation.tie_metrics import per_request_tie_metrics  # noqa: E402
from dpsr_tf.search import fusion  # noqa: E402
from dpsr_tf.search.dense_feedback import FeedbackConfig  # noqa: E402
from dpsr_tf.search.fused_rows import fused_scored_rows  # noqa: E402
from dpsr_tf.search.fusion import FusionConfig  # noqa: E402

METRICS = ("recall@100", "recall@1000", "ndcg@10")


def _list_features(scores, rows, lexical):
    """[Q, K, 3] features of one list's entries (module docstring), 0 where padded."""
    valid = rows >= 0
    ranks = fusion.tie_ranks_np(scores, valid).astype(np.float64)
    n = valid.sum(axis=1, keepdims=True)
    s = np.where(valid, scores.astype(np.float64), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # rows with no entry: all NaN
        if lexical:
            best = np.nan_to_num(np.nanmax(s, axis=1, keepdims=True), nan=1.0)
            score = s / np.where(best > 0, best, 1.0)
        else:
            score = s - np.nan_to_num(np.nanmin(s, axis=1, keepdims=True))
    out = np.stack([np.log((1.0 + ranks) / (n + 2.0)), score, np.ones_like(score)], -1)
    return np.where(valid[..., None], out, 0.0)


def candidates(lists: FoldLists, lo: int, hi: int):
    """(items [N], features [N, 6], request [N] in lo..hi-1) of the union of both lists."""
    d = _list_features(lists.dense_scores[lo:hi], lists.dense_rows[lo:hi], False)
    x = _list_features(lists.lexical_scores[lo:hi], lists.lexical_rows[lo:hi], True)
    q, kd, kl = hi - lo, d.shape[1], x.shape[1]
    rows = np.concatenate([lists.dense_rows[lo:hi], lists.lexical_rows[lo:hi]], axis=1)
    feats = np.concatenate([np.concatenate([d, np.zeros((q, kd, 3))], -1),
                            np.concatenate([np.zeros((q, kl, 3)), x], -1)], axis=1)
    request = np.broadcast_to(np.arange(lo, hi)[:, None], rows.shape)
    valid = rows >= 0
    rows, feats, request = rows[valid], feats[valid], request[valid]
    key = request.astype(np.int64) * (int(rows.max(initial=0)) + 1) + rows
    uniq, inverse = np.unique(key, return_inverse=True)
    out = np.zeros((len(uniq), 6))
    np.add.at(out, inverse, feats)        # an item in both lists: each list's three features
    items, req = np.zeros(len(uniq), np.int64), np.zeros(len(uniq), np.int64)
    items[inverse], req[inverse] = rows, request
    return items, out, req


def _labels(lists, items, req):
    """Whether each candidate is relevant to its request."""
    span = int(max(items.max(initial=0), lists.relevant_rows.max(initial=0))) + 1
    rel_req = np.repeat(np.arange(len(lists)), np.diff(lists.relevant_splits))
    return np.isin(req * span + items, rel_req * span + lists.relevant_rows)


def training_sample(lists: FoldLists, negatives: int, rng):
    xs, ys, ws = [], [], []
    for lo in range(0, len(lists), 1024):
        items, feats, req = candidates(lists, lo, min(len(lists), lo + 1024))
        y = _labels(lists, items, req)
        keep, weight = [np.flatnonzero(y)], [np.ones(int(y.sum()))]
        for r in np.unique(req):
            pool = np.flatnonzero((req == r) & ~y)
            take = pool if len(pool) <= negatives else rng.choice(pool, negatives, False)
            keep.append(take)
            weight.append(np.full(len(take), len(pool) / max(len(take), 1)))
        keep = np.concatenate(keep)
        xs.append(feats[keep])
        ys.append(y[keep])
        ws.append(np.concatenate(weight))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)


def learned_lists(lists: FoldLists, coef: np.ndarray):
    """([Q, K] scores, [Q, K] rows) of the union ranked by the fitted logit."""
    k = lists.k
    scores = np.full((len(lists), k), -np.inf)
    rows = np.full((len(lists), k), -1, np.int64)
    for lo in range(0, len(lists), 1024):
        items, feats, req = candidates(lists, lo, min(len(lists), lo + 1024))
        logit = feats @ coef
        order = np.lexsort((-logit, req))
        start = np.searchsorted(req[order], np.arange(lo, min(len(lists), lo + 1024)))
        end = np.append(start[1:], len(order))
        for r, (a, b) in enumerate(zip(start, end)):
            top = order[a:min(b, a + k)]
            scores[lo + r, :len(top)] = logit[top]
            rows[lo + r, :len(top)] = items[top]
    return scores, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crossval_dir")
    parser.add_argument("--negatives", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args()
    folds = sorted(glob.glob(os.path.join(args.crossval_dir, "fold_*")))
    if len(folds) < 2:
        sys.exit(f"need the folds of a `dpsr crossval --hybrid` run under {args.crossval_dir}")
    lists = [FoldLists.load(os.path.join(f, LISTS_FILE)) for f in folds]
    rng = np.random.default_rng(0)
    samples = [training_sample(L, args.negatives, rng) for L in lists]
    pooled = {way: {s: {m: [] for m in METRICS} for s in ("dense", "lexical", "hybrid", "learned")}
              for way in ("ranked", "tie-aware")}
    for f, fold_dir in enumerate(folds):
        x = np.concatenate([samples[o][0] for o in range(len(folds)) if o != f])
        y = np.concatenate([samples[o][1] for o in range(len(folds)) if o != f])
        w = np.concatenate([samples[o][2] for o in range(len(folds)) if o != f])
        mean, spread = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
        model = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / spread, y,
                                                             sample_weight=w)
        coef = model.coef_[0] / spread
        with open(os.path.join(fold_dir, "hybrid.json"), encoding="utf-8") as fh:
            chosen = json.load(fh)
        fed = (FoldLists.load(os.path.join(fold_dir, FEEDBACK_LISTS_FILE))
               if FeedbackConfig.from_json(chosen["dense_feedback"]).enabled else lists[f])
        L = lists[f]
        systems = {"dense": (L.dense_scores, L.dense_rows),
                   "lexical": (L.lexical_scores, L.lexical_rows),
                   "hybrid": fused_scored_rows(fed.dense_scores, fed.dense_rows,
                                               fed.lexical_scores, fed.lexical_rows, L.k,
                                               FusionConfig.from_json(chosen["fusion"])),
                   "learned": learned_lists(L, coef)}
        rel = (L.relevant_splits, L.relevant_rows, L.relevant_gains)
        print(f"{os.path.basename(fold_dir)}: {len(L)} requests; hybrid {chosen['fusion_name']};"
              f" learned terms dense {np.round(coef[:3], 3)} lexical {np.round(coef[3:], 3)}")
        for name, (scores, rows) in systems.items():
            ranked = metrics_lib.per_request_metrics(rows, *rel, recall_ks=(100, 1000))
            tied = per_request_tie_metrics(rows, scores, *rel, recall_ks=(100, 1000))
            for m in METRICS:
                pooled["ranked"][name][m].append(ranked[m])
                pooled["tie-aware"][name][m].append(tied[m])
            print(f"  {name:8s} " + "  ".join(f"{m} {ranked[m].mean():.4f} / {tied[m].mean():.4f}"
                                              for m in METRICS) + "   (ranked / tie-aware)")
    for way, systems in pooled.items():
        values = {s: {m: np.concatenate(v) for m, v in ms.items()} for s, ms in systems.items()}
        print(f"\n{way}, pooled: " + "; ".join(
            f"{s} " + " ".join(f"{values[s][m].mean():.4f}" for m in METRICS) for s in values))
        for m in METRICS:
            print("  " + paired.paired_test(values["learned"][m], values["hybrid"][m], m,
                                            "learned", "hybrid", num_samples=args.samples).line())


if __name__ == "__main__":
    main()
