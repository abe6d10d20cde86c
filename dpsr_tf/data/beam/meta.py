"""The small metadata that flows through Beam between stages, and how it merges.

Every task returns a metadata dict; a stage's dicts are merged with everything before it into
one dict (a CombineFn), the next stage's side input. Values merge by type:
  int                   summed ("n/<name>": global counts)
  dict                  summed per key ("c/<intermediate>": rows per partition or range;
                        "v/<kind>/<column>": categorical value counts)
  list (a report)       report.ReportFn accumulators ("rep/<kind>")
Its size is that of partition and range lists, vocabularies and a few report examples, never a
number of rows.
"""
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam

from dpsr_tf.data.beam import report as report_lib


def merge_into(out: dict, meta: dict, reports: report_lib.ReportFn) -> dict:
    for key, value in meta.items():
        if key not in out:
            if isinstance(value, dict):
                out[key] = dict(value)
            elif isinstance(value, list):
                out[key] = reports.merge_accumulators([value])
            else:
                out[key] = value
        elif isinstance(value, dict):
            target = out[key]
            for k, n in value.items():
                target[k] = target.get(k, 0) + n
        elif isinstance(value, list):
            out[key] = reports.merge_accumulators([out[key], value])
        else:
            out[key] += value
    return out


class MergeMeta(beam.CombineFn):
    """Merges metadata dicts (see the module docstring)."""

    def __init__(self, max_examples: int):
        super().__init__()
        self._reports = report_lib.ReportFn(max_examples)

    def create_accumulator(self):
        return {}

    def add_input(self, acc, meta):
        return merge_into(acc, meta, self._reports)

    def merge_accumulators(self, accumulators):
        out = {}
        for acc in accumulators:
            merge_into(out, acc, self._reports)
        return out

    def extract_output(self, acc):
        return acc


def add_count(meta: dict, key: str, sub, n: int = 1) -> None:
    """meta[key][sub] += n."""
    d = meta.setdefault(key, {})
    d[sub] = d.get(sub, 0) + n


def add_counts(meta: dict, key: str, counts: Dict) -> None:
    for sub, n in counts.items():
        add_count(meta, key, sub, n)


def offsets(meta: dict, key: str) -> Tuple[List[str], Dict[str, int], int]:
    """(names in order, the first row of each, total) of the per-range counts meta[key]."""
    counts = meta.get(key, {})
    names = sorted(counts)
    starts, total = {}, 0
    for name in names:
        starts[name] = total
        total += counts[name]
    return names, starts, total


def nonempty(meta: dict, key: str) -> Iterable[str]:
    return sorted(k for k, n in meta.get(key, {}).items() if n)
