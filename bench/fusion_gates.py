"""Would a query-dependent fusion beat the chosen one? Gates tried on `dpsr crossval --hybrid` lists.

    PYTHONPATH=. python bench/fusion_gates.py /tmp/cv/bb_cv [--quantiles=0.5,0.75,0.9,0.97,0.99]
    PYTHONPATH=. python bench/fusion_gates.py lists.npz --parts=5   # one split's lists
    PYTHONPATH=. python bench/fusion_gates.py lists.npz --model_dir=M --index_dir=I  # make them

The servable fuses every request's dense and lexical lists with one rule (search/fusion.py).
This asks whether a per-request rule would do better on data nobody tuned to: each gate keeps
a request's lexical entries only where a signal passes a threshold, then fuses with each
weighting of the export's grid (fusion_choice.CANDIDATES, the dense-only and lexical-only ones
left out), and the pair is chosen for fold F on the other folds' held-out requests
(cross-fitting, as `dpsr crossval --hybrid` chooses its fusion), with dense only as a choice.
Gates (a threshold is a quantile of the signal over all folds' requests):

  min        per entry: lexical entries scoring above t (the servable's lexical_min_score)
  top        per request: the lexical list only when its best BM25 score is above t
  dense_top  per request: only when the dense list's best score is below t (an unsure tower)
  gap        per request: only when the dense top-1 minus top-10 score is below t (a flat list)

Prints the best pairs by the export's objective (mean of Recall@100, Recall@1000, nDCG@10,
requests of all folds pooled, minus dense only), each fold's cross-fitted choice, and the
cross-fitted result against the served dense list per request (paired bootstrap 95% interval,
requests better / worse). Reads <dir>/fold_*/hybrid_lists.npz; CPU-bound, minutes per fold.
"""
import argparse
import dataclasses
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import fusion_choice, paired  # noqa: E402
from dpsr_tf.evaluation.crossval_hybrid import LISTS_FILE, FoldLists, candidate_metrics  # noqa: E402
from dpsr_tf.search.fusion import FusionConfig  # noqa: E402

# What is printed; the choice is by --objective (the export's objective by default).
REPORTED = fusion_choice.OBJECTIVE
DENSE_ONLY = FusionConfig(lexical_weight=0.0)
GATES = ("min", "top", "dense_top", "gap")
# The grid's weightings, without its two one-list candidates.
WEIGHTINGS = [c for c in fusion_choice.CANDIDATES if c.dense_weight and c.lexical_weight]


def split_lists(lists: FoldLists, parts: int, seed: int = 0):
    """The requests of one FoldLists dealt into `parts` FoldLists by a seeded permutation."""
    owner = np.random.default_rng(seed).permutation(len(lists)) % parts
    out = []
    for part in range(parts):
        rows = np.flatnonzero(owner == part)
        lo, hi = lists.relevant_splits[rows], lists.relevant_splits[rows + 1]
        relevant = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]).astype(np.int64)
        out.append(FoldLists(
            lists.dense_scores[rows], lists.dense_rows[rows], lists.lexical_scores[rows],
            lists.lexical_rows[rows], np.concatenate([[0], np.cumsum(hi - lo)]),
            lists.relevant_rows[relevant], lists.relevant_gains[relevant], k=lists.k))
    return out


def write_lists(path: str, model_dir: str, index_dir: str, spelling: bool) -> None:
    """One split's served dense and lexical lists, as crossval_hybrid.evaluate_fold keeps them."""
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import evaluate as evaluate_lib
    from dpsr_tf.evaluation import hybrid as hybrid_lib
    from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout
    layout = layout_of(model_dir, None)
    cfg = evaluate_lib.EvalConfig(split="eval", num_random=0)
    with spelled_layout(layout, index_dir if spelling else None) as view:
        run = hybrid_lib.open_hybrid(model_dir, index_dir, view or layout, cfg)
        scores, rows = run.lexical_lists(FusionConfig())
        FoldLists(run.dense_scores, run.dense_rows, scores, rows, *run.relevant,
                  k=run.k).save(path)


def _signal(lists: FoldLists, gate: str) -> np.ndarray:
    if gate == "min":
        return lists.lexical_scores[lists.lexical_rows >= 0]
    if gate == "top":
        return lists.lexical_scores[lists.lexical_rows[:, 0] >= 0, 0]
    if gate == "dense_top":
        return lists.dense_scores[:, 0]
    return lists.dense_scores[:, 0] - lists.dense_scores[:, 9]


def gated(lists: FoldLists, gate: str, t: float) -> FoldLists:
    """The lists with the lexical entries the gate drops set to -1 (padding)."""
    rows = lists.lexical_rows.copy()
    if gate == "min":
        rows[lists.lexical_scores <= t] = -1
    elif gate == "top":
        rows[lists.lexical_scores[:, 0] <= t] = -1
    elif gate == "dense_top":
        rows[lists.dense_scores[:, 0] >= t] = -1
    elif gate == "gap":
        rows[(lists.dense_scores[:, 0] - lists.dense_scores[:, 9]) >= t] = -1
    return dataclasses.replace(lists, lexical_rows=rows)


def _pool(parts) -> dict:
    return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lists", help="a `dpsr crossval --hybrid` output, or one FoldLists .npz")
    parser.add_argument("--parts", type=int, default=5, help="with one .npz: folds to deal into")
    parser.add_argument("--model_dir", help="with --index_dir: write the .npz from this build")
    parser.add_argument("--index_dir")
    parser.add_argument("--spelling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quantiles", default="0.5,0.75,0.9,0.97,0.99")
    parser.add_argument("--gates", default="min,top,dense_top,gap")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--objective", default=",".join(fusion_choice.OBJECTIVE),
                        help="metrics whose mean chooses (the export's by default)")
    args = parser.parse_args()
    objective = tuple(args.objective.split(","))

    def score(per_request: dict) -> float:
        return float(np.mean([per_request[m].mean() for m in objective]))
    if args.model_dir:
        write_lists(args.lists, args.model_dir, args.index_dir, args.spelling)
    if os.path.isfile(args.lists):
        folds = split_lists(FoldLists.load(args.lists), args.parts)
    else:
        folds = [FoldLists.load(p) for p in
                 sorted(glob.glob(os.path.join(args.lists, "fold_*", LISTS_FILE)))]
    if len(folds) < 2:
        sys.exit(f"{args.lists}: fewer than two fold_*/{LISTS_FILE} (run dpsr crossval "
                 "--hybrid there first)")
    recall_ks = sorted({int(m.split("@")[1]) for m in REPORTED + objective
                        if m.startswith("recall@")})
    quantiles = [float(q) for q in args.quantiles.split(",")]
    print(f"{len(folds)} folds, requests {[len(f) for f in folds]}", flush=True)
    dense = [candidate_metrics(f, [DENSE_ONLY], recall_ks)[0] for f in folds]
    pairs, results = [], []   # (gate, t, weighting), per fold per-request metrics
    gates = [g for g in args.gates.split(",") if g]  # --gates= : the grid's weightings only
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        sys.exit(f"--gates: unknown {unknown}; choose among {list(GATES)}")
    for gate in ["none"] + gates:
        if gate == "none":
            thresholds = [0.0]
        else:
            signal = np.concatenate([_signal(f, gate) for f in folds])
            # High thresholds keep little for min/top; the dense gates keep the unsure end.
            qs = quantiles if gate in ("min", "top") else [1 - q for q in quantiles]
            thresholds = [float(np.quantile(signal, q)) for q in qs]
        for t in thresholds:
            per_fold = [candidate_metrics(f if gate == "none" else gated(f, gate, t),
                                          WEIGHTINGS, recall_ks) for f in folds]
            for j, w in enumerate(WEIGHTINGS):
                pairs.append((gate, t, w))
                results.append([per_fold[i][j] for i in range(len(folds))])
            print(f"  {gate} t={t:.4g}: {len(WEIGHTINGS)} weightings fused", flush=True)
    base = score(_pool(dense))
    print(f"\ndense only (pooled): " + ", ".join(
        f"{m} {_pool(dense)[m].mean():.4f}" for m in REPORTED))
    print(f"choosing by the mean of {', '.join(objective)}")
    print("best pairs, pooled over all folds (optimistic: chosen on the requests they score):")
    order = sorted(range(len(pairs)), key=lambda i: -score(_pool(results[i])))
    for i in order[:10]:
        gate, t, w = pairs[i]
        pooled = _pool(results[i])
        print(f"  {gate:9s} t={t:<8.4g} {fusion_choice.describe(w):32s} "
              f"{score(pooled) - base:+.5f}  " + " ".join(
                  f"{m} {pooled[m].mean() - _pool(dense)[m].mean():+.5f}" for m in REPORTED))
    chosen = []
    for fold in range(len(folds)):
        others = [i for i in range(len(folds)) if i != fold]
        best, best_score = None, score(_pool([dense[i] for i in others]))
        for j, res in enumerate(results):
            s = score(_pool([res[i] for i in others]))
            if s > best_score:
                best, best_score = j, s
        name = "dense only" if best is None else (
            f"{pairs[best][0]} t={pairs[best][1]:.4g} {fusion_choice.describe(pairs[best][2])}")
        print(f"fold {fold}: chosen on the other folds: {name}")
        chosen.append(dense[fold] if best is None else results[best][fold])
    got, ref = _pool(chosen), _pool(dense)
    for m in REPORTED:
        print("cross-fitted minus dense only: " + paired.paired_test(
            got[m], ref[m], m, "cross-fitted", "dense only", num_samples=args.samples).line())


if __name__ == "__main__":
    main()
