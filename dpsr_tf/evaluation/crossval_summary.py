"""Fold results of a cross-validation -> the numbers it reports (`dpsr crossval`).

Per system and metric: the mean, sample standard deviation (ddof=1), minimum and maximum over
the folds (`summarize_folds`), shown as a `mean ± std` table (`format_table`); and paired
comparisons of the systems over every held-out request of every fold together
(`pooled_comparisons`; each query is held out by exactly one fold, evaluation/paired.py).
"""
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from dpsr_tf.evaluation import paired as paired_lib

TABLE_METRICS = ("recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "top@1",
                 "top@10", "auc")
# A fold's per-request metrics in its metrics.json: {system: {metric: [values]}}.
PER_QUERY = "per_query"
# Result entries that describe the run rather than measure the model (not averaged).
_NOT_METRICS = ("seconds", "checkpoint")


def summarize_folds(fold_metrics: List[Dict[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """Mean and standard deviation over folds of every numeric metric of every system.

    Args:
      fold_metrics: per fold, {system: {metric: value}} (e.g. {"dpsr": {...}, "bm25": {...}}).

    Returns:
      {system: {metric: {"mean", "std", "min", "max", "values"}}} over the metrics present with
      a numeric value in every fold; std is the sample standard deviation (ddof=1; 0.0 for one
      fold).
    """
    out = {}
    systems = [s for s in fold_metrics[0] if all(s in f for f in fold_metrics)] \
        if fold_metrics else []
    for system in systems:
        names = [k for k, v in fold_metrics[0][system].items() if k not in _NOT_METRICS
                 and _is_number(v) and all(_is_number(f[system].get(k)) for f in fold_metrics)]
        out[system] = {}
        for name in names:
            values = np.array([float(f[system][name]) for f in fold_metrics], np.float64)
            out[system][name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "min": float(values.min()), "max": float(values.max()),
                "values": values.tolist()}
    return out


def format_table(summary: Dict[str, Dict[str, dict]],
                 metrics: tuple = TABLE_METRICS) -> str:
    """The summary as a text table: one row per system, `mean ± std` per metric."""
    shown = [m for m in metrics if any(m in s for s in summary.values())]
    width = 17
    name = max([8] + [len(system) + 1 for system in summary])
    lines = [f"{'system':<{name}}" + "".join(f"{m:>{width}}" for m in shown)]
    for system, values in summary.items():
        cells = "".join(f"{values[m]['mean']:>{width - 9}.4f} ± {values[m]['std']:.4f}"
                        if m in values else f"{'-':>{width}}" for m in shown)
        lines.append(f"{system:<{name}}{cells}")
    return "\n".join(lines)


def pooled_comparisons(fold_metrics: List[dict], seed: int = 0,
                       pairs: Optional[List[Tuple[str, str]]] = None,
                       num_samples: int = 10000) -> List[paired_lib.PairedResult]:
    """Paired comparisons of the systems over the held-out requests of all folds together.

    Each fold's metrics carry PER_QUERY ({system: {metric: [values]}}); the folds' requests
    are disjoint, so concatenating them gives every held-out request once. Folds written
    before per-query results existed have none: then nothing is compared.

    Args:
      pairs: (a, b) systems to compare (a - b), metric by metric (paired.DEFAULT_METRICS);
        None = every pair of the systems (paired.compare_systems).
    """
    if not fold_metrics or not all(PER_QUERY in m for m in fold_metrics):
        return []
    systems = [s for s in fold_metrics[0][PER_QUERY]
               if all(s in m[PER_QUERY] for m in fold_metrics)]
    pooled = {}
    for system in systems:
        metrics = set.intersection(*(set(m[PER_QUERY][system]) for m in fold_metrics))
        pooled[system] = {name: np.concatenate([np.asarray(m[PER_QUERY][system][name])
                                                for m in fold_metrics])
                          for name in sorted(metrics)}
    if len(pooled) < 2:
        return []
    if pairs is None:
        return paired_lib.compare_systems(pooled, seed=seed, num_samples=num_samples)
    return [paired_lib.paired_test(pooled[a][metric], pooled[b][metric], metric, a, b,
                                   num_samples=num_samples, seed=seed)
            for metric in paired_lib.DEFAULT_METRICS for a, b in pairs
            if a in pooled and b in pooled and metric in pooled[a] and metric in pooled[b]]


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(float(value)))
