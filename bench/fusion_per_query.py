"""Would choosing the fusion per query, from what the two lists look like, beat one fusion per
catalog? Tried on `dpsr crossval --hybrid`'s kept lists.

    PYTHONPATH=. python bench/fusion_per_query.py /tmp/cv/syn_cv \
        [--candidates="dense only|dense only+fb|rrf k=60 dense 1 lexical 0.25+fb|lexical only"]

The servable fuses every query with one fusion chosen on the catalog's evaluation split
(evaluation/fusion_choice.py). Per request, some other candidate of the grid (with or without
dense feedback) often scores higher: the oracle that takes each request's best is far above
any one choice. This asks how much of that a gate can find from features a servable has at
query time: score gaps of each list (top 1 minus 10th / 100th), the top scores, how many items
BM25 matched and how many tie at its top, and the overlap of the dense list with the lexical
list and with the feedback list (top 10 and top 100). Per candidate, a gradient-boosted
regressor predicts its objective (mean of Recall@100, Recall@1000 and nDCG@10) minus the
cross-fitted base choice's; a request takes the best predicted candidate when the gain
predicted beats a margin. Fitted on the other folds (cross-fitted, as crossval's choice).
Reads fold_*/{hybrid_lists*.npz, fusion_candidates*.npz} (computed if missing); minutes.
"""
import argparse
import glob
import os
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import fusion_choice  # noqa: E402
from dpsr_tf.evaluation.crossval_hybrid import (CANDIDATES_FILE,  # noqa: E402
                                                FEEDBACK_CANDIDATES_FILE, FEEDBACK_LISTS_FILE,
                                                LISTS_FILE, FoldLists, cached_candidate_metrics)

OBJECTIVE = ("recall@100", "recall@1000", "ndcg@10")
MARGINS = (0.0, 0.005, 0.01, 0.02)


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return np.array([len(np.intersect1d(x[:k][x[:k] >= 0], y[:k][y[:k] >= 0]))
                     for x, y in zip(a, b)], np.float64)


def features(fold_dir: str) -> np.ndarray:
    """[Q, 12] the query-time features of the module docstring."""
    plain = FoldLists.load(os.path.join(fold_dir, LISTS_FILE))
    moved = FoldLists.load(os.path.join(fold_dir, FEEDBACK_LISTS_FILE))
    ds, dr, ls, lr = plain.dense_scores, plain.dense_rows, plain.lexical_scores, plain.lexical_rows
    matched = (lr >= 0).sum(1)
    top_lexical = np.where(matched > 0, ls[:, 0], 0.0).astype(np.float64)
    cols = []
    for i in (9, 99):
        dense_at = np.where(dr[:, i] >= 0, ds[:, i], ds[:, 0]).astype(np.float64)
        lexical_at = np.where(lr[:, i] >= 0, ls[:, i], 0.0).astype(np.float64)
        cols += [ds[:, 0] - dense_at, lexical_at / np.where(top_lexical > 0, top_lexical, 1.0)]
    cols += [ds[:, 0].astype(np.float64), top_lexical, np.log1p(matched),
             ((ls == ls[:, :1]) & (lr >= 0)).sum(1).astype(np.float64)]
    cols += [_overlap(dr, lr, 10), _overlap(dr, lr, 100), _overlap(dr, moved.dense_rows, 10),
             _overlap(dr, moved.dense_rows, 100)]
    return np.stack(cols, 1)


def _interval(d: np.ndarray, rng, samples: int):
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(samples)]
    return np.percentile(boot, 2.5), np.percentile(boot, 97.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crossval_dir")
    parser.add_argument("--candidates", default="",
                        help="'|'-separated candidate names the gate may pick (default: all)")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    cands = fusion_choice.CANDIDATES
    names = ([fusion_choice.describe(c) for c in cands]
             + [fusion_choice.describe(c) + "+fb" for c in cands])
    allowed = set(args.candidates.split("|")) if args.candidates else set(names)
    unknown = allowed - set(names)
    if unknown:
        sys.exit(f"unknown candidates {sorted(unknown)}; the grid: {names}")
    dense = names.index("dense only")
    folds = [f for f in sorted(glob.glob(os.path.join(args.crossval_dir, "fold_*")))
             if os.path.isfile(os.path.join(f, FEEDBACK_LISTS_FILE))]
    if len(folds) < 2:
        sys.exit("needs at least 2 folds with their lists")
    values, feats = [], []
    for fold_dir in folds:   # [Q, C, 3] per fold
        per = (cached_candidate_metrics(fold_dir, cands, (10, 100, 1000))
               + cached_candidate_metrics(fold_dir, cands, (10, 100, 1000),
                                          FEEDBACK_LISTS_FILE, FEEDBACK_CANDIDATES_FILE))
        values.append(np.stack([np.stack([c[m] for m in OBJECTIVE], 1) for c in per], 1))
        feats.append(features(fold_dir))
        print(f"{fold_dir}: {len(feats[-1])} requests", flush=True)
    pooled = np.concatenate(values)
    rng = np.random.default_rng(0)

    def report(label, got):
        cells = []
        for i, m in enumerate(OBJECTIVE):
            d = got[:, i] - pooled[:, dense, i]
            lo, hi = _interval(d, rng, args.samples)
            cells.append(f"{m} {got[:, i].mean():.4f} ({d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}])")
        print(f"  {label}: " + "; ".join(cells) + "  (vs dense only)", flush=True)

    oracle = pooled[np.arange(len(pooled)), pooled.mean(2).argmax(1)]
    report("oracle, each request's best candidate", oracle)
    picked = {m: [] for m in MARGINS}
    chosen = []
    for k in range(len(folds)):
        train = [i for i in range(len(folds)) if i != k]
        x = np.concatenate([feats[i] for i in train])
        y_all = np.concatenate([values[i] for i in train]).mean(2)
        base = int(np.argmax(y_all.mean(0)))
        chosen.append(names[base])
        pred = np.full((len(feats[k]), len(names)), -np.inf)
        for c, name in enumerate(names):
            if name not in allowed or c == base:
                continue
            model = HistGradientBoostingRegressor(max_iter=100, max_leaf_nodes=15,
                                                  min_samples_leaf=200, random_state=0)
            pred[:, c] = model.fit(x, y_all[:, c] - y_all[:, base]).predict(feats[k])
        for margin in MARGINS:
            pick = np.where(pred.max(1) > margin, pred.argmax(1), base)
            picked[margin].append(values[k][np.arange(len(pick)), pick])
    print(f"  cross-fitted single choice per fold: {chosen}")
    base_rows = np.concatenate([values[k][:, names.index(c)] for k, c in enumerate(chosen)])
    report("one fusion per catalog (crossval's choice)", base_rows)
    for margin in MARGINS:
        report(f"gate, margin {margin}", np.concatenate(picked[margin]))


if __name__ == "__main__":
    main()
