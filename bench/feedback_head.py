"""Would dense feedback that keeps the first search's head lose nothing at the top? Tried on
`dpsr crossval --hybrid`'s kept lists.

    PYTHONPATH=. python bench/feedback_head.py /tmp/cv/syn_cv [--heads=3,10,20]

Dense feedback (search/dense_feedback.py) moves each query toward its first hits and searches
again: deeper recall rises, but on the synthetic catalog the top 10 gets slightly worse
(docs/results.md, "Synthetic catalog with today's defaults"). "Head m" here is the first
search's top m followed by the feedback search's list without them, cut at k. Reads each fold's
hybrid_lists.npz (first search) and hybrid_lists_feedback.npz (crossval's DEFAULT feedback);
prints pooled Recall@10/100/1000 and nDCG@10 of the plain list, the feedback list and each
head, with the paired difference from the plain list (95% bootstrap interval, seeded).
Seconds per fold.
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import metrics as metrics_lib  # noqa: E402
from dpsr_tf.evaluation.crossval_hybrid import (FEEDBACK_LISTS_FILE, LISTS_FILE,  # noqa: E402
                                                FoldLists)

METRICS = ("recall@10", "recall@100", "recall@1000", "ndcg@10")


def keep_head(first_rows: np.ndarray, second_rows: np.ndarray, head: int) -> np.ndarray:
    """[Q, K] the first list's top `head` rows, then the second list's rows not among them."""
    out = np.full_like(second_rows, -1)
    k = second_rows.shape[1]
    for i in range(len(first_rows)):
        top = first_rows[i, :head][first_rows[i, :head] >= 0]
        rest = second_rows[i][(second_rows[i] >= 0) & ~np.isin(second_rows[i], top)]
        row = np.concatenate([top, rest])[:k]
        out[i, :len(row)] = row
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crossval_dir")
    parser.add_argument("--heads", default="3,10,20")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    heads = [int(h) for h in args.heads.split(",")]
    pooled = {}
    for fold_dir in sorted(glob.glob(os.path.join(args.crossval_dir, "fold_*"))):
        if not os.path.isfile(os.path.join(fold_dir, FEEDBACK_LISTS_FILE)):
            continue
        plain = FoldLists.load(os.path.join(fold_dir, LISTS_FILE))
        moved = FoldLists.load(os.path.join(fold_dir, FEEDBACK_LISTS_FILE))
        systems = {"plain": plain.dense_rows, "feedback": moved.dense_rows}
        systems.update({f"head {m}": keep_head(plain.dense_rows, moved.dense_rows, m)
                        for m in heads})
        for name, rows in systems.items():
            got = metrics_lib.per_request_metrics(rows, plain.relevant_splits,
                                                  plain.relevant_rows, plain.relevant_gains,
                                                  recall_ks=(10, 100, 1000))
            for m in METRICS:
                pooled.setdefault(name, {}).setdefault(m, []).append(got[m])
        print(f"{fold_dir}: {len(plain)} requests", flush=True)
    rng = np.random.default_rng(0)
    base = {m: np.concatenate(v) for m, v in pooled["plain"].items()}
    for name, values in pooled.items():
        cells = []
        for m in METRICS:
            v = np.concatenate(values[m])
            d = v - base[m]
            boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(args.samples)]
            cells.append(f"{m} {v.mean():.4f} ({d.mean():+.4f} [{np.percentile(boot, 2.5):+.4f}, "
                         f"{np.percentile(boot, 97.5):+.4f}])")
        print(f"{name:9s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
