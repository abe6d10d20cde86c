"""Per-request results of an evaluation: taken out of the results, written as JSON lines, read
back and aligned for paired comparisons (`dpsr evaluate --per_query`, `dpsr compare`).

One line per (system, request):
  {"system": "dpsr", "split": "eval", "request": 0, "query": "...", "user_row": -1,
   "relevant": 3, "recall@10": 0.33, "recall@100": 1.0, ..., "ndcg@10": 0.5, "mrr@10": 1.0}
`request` is the request's position in the split's EvalSet; (split, query, user_row) identify
it across runs, so files written by separate `dpsr evaluate` runs on the same layout (a model
and BM25, two models) can be compared request by request.
"""
import json
from typing import Dict, List, Tuple

import numpy as np

from dpsr_tf.evaluation.metrics import PER_REQUEST

RequestKey = Tuple[str, str, int]


def take_per_request(results: Dict[str, dict]) -> Dict[str, Dict[str, np.ndarray]]:
    """Removes the per-request arrays from `dpsr evaluate`'s results, by system.

    A system's own arrays (key PER_REQUEST) keep its name; arrays of a ranking inside it
    (key "<ranking>_" + PER_REQUEST, e.g. the served ranking of "dpsr") are named
    "<system>_<ranking>" ("dpsr_served").

    Returns:
      {system: {metric: [Q] float64}}, in the order of `results`.
    """
    out = {}
    for name, values in results.items():
        if not isinstance(values, dict):
            continue
        for key in [k for k in values if k == PER_REQUEST or k.endswith("_" + PER_REQUEST)]:
            label = name if key == PER_REQUEST else f"{name}_{key[:-len(PER_REQUEST) - 1]}"
            out[label] = values.pop(key)
    return out


def write_jsonl(path: str, split: str, eval_set, per_system: Dict[str, Dict[str, np.ndarray]]
                ) -> int:
    """Writes one line per (system, request); returns the number of lines."""
    counts = np.diff(eval_set.relevant_splits)
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for system, metrics in per_system.items():
            for i in range(len(eval_set)):
                row = {"system": system, "split": split, "request": i,
                       "query": eval_set.queries[i], "user_row": int(eval_set.user_rows[i]),
                       "relevant": int(counts[i])}
                row.update({m: float(v[i]) for m, v in metrics.items()})
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                lines += 1
    return lines


def read_jsonl(paths: List[str]) -> Dict[str, Dict[RequestKey, Dict[str, float]]]:
    """{system: {(split, query, user_row): {metric: value}}} from per-query files.

    A path may be written LABEL=PATH: its systems are then named LABEL (a file of one
    system) or LABEL/SYSTEM, so two runs of one system (BM25 over titles and over all fields,
    two checkpoints) can be compared.

    Raises:
      ValueError: a line that is not a per-query record (file and line named), or one system
        appearing twice for the same request (e.g. the same file given twice).
    """
    out: Dict[str, Dict[RequestKey, Dict[str, float]]] = {}
    for entry in paths:
        label, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        records = _read_one(path)
        for system, rows in records.items():
            name = (label if len(records) == 1 else f"{label}/{system}") if label else system
            if name in out and set(out[name]) & set(rows):
                raise ValueError(f"{path}: system {name!r} was already read from another file "
                                 "for the same requests (the same file given twice, or two "
                                 "runs with one system name? label them: LABEL=PATH)")
            out.setdefault(name, {}).update(rows)
    return out


def _read_one(path: str) -> Dict[str, Dict[RequestKey, Dict[str, float]]]:
    """{system: {request key: {metric: value}}} of one per-query file."""
    out: Dict[str, Dict[RequestKey, Dict[str, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (str(row.pop("split")), str(row.pop("query")), int(row.pop("user_row")))
                system = str(row.pop("system"))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{line_no}: not a per-query record of `dpsr "
                                 f"evaluate --per_query` ({type(e).__name__}: {e})") from None
            row.pop("request", None)
            row.pop("relevant", None)
            seen = out.setdefault(system, {})
            if key in seen:
                raise ValueError(f"{path}:{line_no}: system {system!r} has request {key} twice")
            seen[key] = {m: float(v) for m, v in row.items()}
    return out


def align(records: Dict[str, Dict[RequestKey, Dict[str, float]]]
          ) -> Tuple[List[RequestKey], Dict[str, Dict[str, np.ndarray]]]:
    """The requests every system answered, and each system's values over them in one order.

    Raises:
      ValueError: fewer than two systems, or no request in common.
    """
    if len(records) < 2:
        raise ValueError(f"need two systems to compare; got {sorted(records)}")
    common = set.intersection(*(set(r) for r in records.values()))
    if not common:
        raise ValueError("the systems share no request (were they evaluated on the same "
                         "layout and split?)")
    keys = sorted(common)
    per_system = {}
    for system, rows in records.items():
        metrics = set.intersection(*(set(rows[k]) for k in keys))
        per_system[system] = {m: np.array([rows[k][m] for k in keys]) for m in sorted(metrics)}
    return keys, per_system
