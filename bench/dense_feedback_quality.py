"""Does dense feedback help on data nobody tuned to? Cross-fitted, as `dpsr export` would choose it.

    PYTHONPATH=. python bench/dense_feedback_quality.py --crossval_dir=/tmp/cv/bb_cv
    PYTHONPATH=. python bench/dense_feedback_quality.py --model_dir=M --index_dir=I --parts=5
    PYTHONPATH=. python bench/dense_feedback_quality.py --model_dir=M --index_dir=I --rewrites=T

`dpsr export --dense_feedback=auto` tries every fusion of the grid (fusion_choice.CANDIDATES)
without feedback and with the default feedback (dense_feedback.DEFAULT) on the layout's eval
split and keeps the best pair. This measures that rule without the bias of choosing on the
requests it scores: per fold of a `dpsr crossval --hybrid` run (its fold_*/model, index, layout;
queries as the speller corrects them, crossval's default), or per seeded part of one model's
eval split, the served dense list is searched without and with each feedback setting, fused
with every candidate, and fold F's pair is chosen on the other folds' requests (the export's
objective). Printed: the pooled dense lists without and with each setting, the cross-fitted
hybrid without feedback (today's `--dense_feedback=off`) and with the choice of feedback, and
the paired differences of the chosen hybrid against no feedback, its own dense list and BM25
(evaluation/paired.py: bootstrap 95% interval over requests, sign-flip p, requests better /
worse / tied).

With `--rewrites=TABLE` (a `dpsr rewrite` table) the lexical list of every variant is the one a
servable exported with `--rewrites=TABLE` fuses: the query's BM25 list merged with its
rewrites' lists by the default rule (rewrite_merge.RewriteConfig; the table looked up by the
query as typed, BM25 searching the spelled query, as the servable does).
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.search.dense_feedback import DEFAULT  # noqa: E402
from dpsr_tf.evaluation import crossval_hybrid, fusion_choice  # noqa: E402
from dpsr_tf.evaluation import evaluate as evaluate_lib  # noqa: E402
from dpsr_tf.evaluation import hybrid as hybrid_lib  # noqa: E402
from dpsr_tf.evaluation import paired  # noqa: E402
from dpsr_tf.evaluation import rewrites as rewrites_lib  # noqa: E402
from dpsr_tf.rewriting import table as table_lib  # noqa: E402
from dpsr_tf.evaluation.crossval_hybrid import FoldLists, candidate_metrics  # noqa: E402
from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout  # noqa: E402
from dpsr_tf.search.dense_feedback import FeedbackConfig  # noqa: E402
from dpsr_tf.search.fusion import FusionConfig  # noqa: E402
from dpsr_tf.search.rewrite_merge import RewriteConfig  # noqa: E402

REPORTED = ("recall@100", "recall@1000", "ndcg@10")
RECALL_KS = (10, 100, 1000)


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


def _typed_queries(layout):
    """The eval split's queries as typed (a rewrite table's keys), in request order."""
    from dpsr_tf.data import eval_set as eval_set_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    return eval_set_lib.load_eval_set(layout_lib.load_layout_spec(layout), "eval").queries


def _lists(model_dir, index_dir, layout_dir, variants, spelling, table=None):
    """Per variant, the split's FoldLists (its dense list with that feedback); with a rewrite
    table, also the same with the lexical list merged with the rewrites' lists as the servable
    merges them (else None)."""
    cfg = evaluate_lib.EvalConfig(split="eval", num_random=0)
    layout = layout_dir or layout_of(model_dir, None)
    with spelled_layout(layout, index_dir if spelling else None, log=lambda _: None) as view:
        run = hybrid_lib.open_hybrid(model_dir, index_dir, view or layout, cfg,
                                     log=lambda _: None)
        plain = run.lexical_lists(FusionConfig())
        merged = None
        if table is not None:
            typed = _typed_queries(layout)
            if len(typed) != len(run.eval_set.queries):
                raise ValueError(f"{layout}: {len(typed)} typed queries against "
                                 f"{len(run.eval_set.queries)} spelled ones")
            rewrite = RewriteConfig()
            texts = rewrites_lib.rewrite_texts(typed, table, rewrite.max_rewrites)
            print(f"  {sum(bool(t) for t in texts)} of {len(texts)} requests have rewrites",
                  flush=True)
            merged = rewrites_lib.lexical_lists_with_rewrites(
                run.searcher, run.eval_set.queries, texts, rewrite, run.k)(FusionConfig())
    dense = [run.dense_lists(v) for v in variants]

    def with_lexical(lexical):
        return [FoldLists(*d, *lexical, *run.relevant, k=run.k) for d in dense]
    return with_lexical(plain), (with_lexical(merged) if merged is not None else None)


def _pool(parts):
    return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}


def _paired(name, got, ref, samples, names):
    """The paired test (evaluation/paired.py) of got - ref on each reported metric; names
    label got and ref in the printed lines."""
    for m in REPORTED:
        print(f"  {name}: " + paired.paired_test(got[m], ref[m], m, *names,
                                                 num_samples=samples).line())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crossval_dir", help="a `dpsr crossval --hybrid` output")
    parser.add_argument("--model_dir", help="or one model and index: its eval split in parts")
    parser.add_argument("--index_dir")
    parser.add_argument("--parts", type=int, default=5)
    parser.add_argument("--settings", default=f"{DEFAULT.items}:{DEFAULT.weight:g}",
                        help="feedback settings items:weight,... (the first is what the "
                        "export tries; the others are printed for comparison)")
    parser.add_argument("--spelling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--rewrites", help="a `dpsr rewrite` table: score the lexical list "
                        "merged with the rewrites' (as `dpsr export --rewrites` serves it)")
    args = parser.parse_args()
    table = table_lib.read_table(args.rewrites) if args.rewrites else None
    settings = [FeedbackConfig(int(s.split(":")[0]), float(s.split(":")[1]))
                for s in args.settings.split(",")]
    variants = [FeedbackConfig()] + settings
    if args.crossval_dir:
        folds = sorted(glob.glob(os.path.join(args.crossval_dir, "fold_*")))
        per_fold = []   # per fold, (plain, merged) per variant FoldLists
        for d in folds:
            print(f"{d}: searching {len(variants)} dense variants", flush=True)
            per_fold.append(_lists(os.path.join(d, "model"), os.path.join(d, "index"),
                                   os.path.join(d, "layout"), variants, args.spelling,
                                   table))
        plain = [f[0] for f in per_fold]
        merged = [f[1] for f in per_fold] if table is not None else None
    else:
        whole = _lists(args.model_dir, args.index_dir, None, variants, args.spelling, table)

        def in_parts(lists):   # [variant] -> [part][variant]
            parts = [split_lists(v, args.parts) for v in lists]
            return [[parts[v][p] for v in range(len(variants))] for p in range(args.parts)]
        plain = in_parts(whole[0])
        merged = in_parts(whole[1]) if table is not None else None
    off, chosen = _report(plain, variants, args.samples)
    if merged is not None:
        print(f"\n=== with the rewrite table {args.rewrites} ===")
        off_rw, chosen_rw = _report(merged, variants, args.samples)
        print("\nwith the table minus without it (cross-fitted hybrids):")
        _paired("no feedback", off_rw, off, args.samples, ("with", "without"))
        for v in range(1, len(variants)):
            _paired(f"feedback chosen ({variants[v].describe()} or none)", chosen_rw[v - 1],
                    chosen[v - 1], args.samples, ("with", "without"))


def _report(per_fold, variants, samples):
    """Prints the pooled dense lists and the cross-fitted hybrids of per_fold[fold][variant];
    returns the hybrid without feedback and, per feedback setting, the hybrid choosing it."""
    n_folds = len(per_fold)
    print(f"{n_folds} folds, requests {[len(f[0]) for f in per_fold]}", flush=True)
    cands = fusion_choice.CANDIDATES
    dense_only = cands.index(FusionConfig(lexical_weight=0.0))
    lexical_only = cands.index(FusionConfig(dense_weight=0.0, lexical_weight=1.0))
    # metrics[fold][variant][candidate] = per-request metrics
    metrics = [[candidate_metrics(lists, cands, RECALL_KS) for lists in fold]
               for fold in per_fold]
    print("\npooled served dense lists:")
    for v, variant in enumerate(variants):
        pooled = _pool([metrics[f][v][dense_only] for f in range(n_folds)])
        print(f"  {variant.describe():26s} " + " ".join(
            f"{m} {pooled[m].mean():.4f}" for m in REPORTED))
    for v in range(1, len(variants)):
        _paired(f"dense, {variants[v].describe()} minus none",
                _pool([metrics[f][v][dense_only] for f in range(n_folds)]),
                _pool([metrics[f][0][dense_only] for f in range(n_folds)]), samples,
                ("feedback", "none"))

    def cross_fitted(allowed):
        """Per fold the (variant, candidate) chosen on the others, and its metrics there."""
        flat = [(v, c) for v in allowed for c in range(len(cands))]
        per = [[metrics[f][v][c] for v, c in flat] for f in range(n_folds)]
        chosen = crossval_hybrid.cross_fit(per, fusion_choice.OBJECTIVE)
        names = [f"{variants[flat[i][0]].describe()}, "
                 f"{fusion_choice.describe(cands[flat[i][1]])}" for i, _ in chosen]
        return names, _pool([per[f][chosen[f][0]] for f in range(n_folds)])

    off_names, off = cross_fitted([0])
    print("\ncross-fitted hybrid, no feedback (--dense_feedback=off):")
    print("  folds chose: " + "; ".join(off_names))
    print("  " + " ".join(f"{m} {off[m].mean():.4f}" for m in REPORTED))
    chosen = []
    for v in range(1, len(variants)):
        names, got = cross_fitted([0, v])
        print(f"cross-fitted hybrid, feedback chosen ({variants[v].describe()} or none):")
        print("  folds chose: " + "; ".join(names))
        print("  " + " ".join(f"{m} {got[m].mean():.4f}" for m in REPORTED))
        _paired("minus no feedback", got, off, samples, ("chosen", "no feedback"))
        # The served hybrid against each of its two lists.
        _paired("minus its dense list", got,
                _pool([metrics[f][v][dense_only] for f in range(n_folds)]), samples,
                ("hybrid", "dense + feedback"))
        _paired("minus BM25", got, _pool([metrics[f][0][lexical_only] for f in range(n_folds)]),
                samples, ("hybrid", "bm25"))
        chosen.append(got)
    return off, chosen


if __name__ == "__main__":
    main()
