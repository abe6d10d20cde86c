"""The rejection report of one input file, merged across workers.

Elements are report events of one file: ("read",), ("kept",) or ("reject", sort key, reason
value, example text). The merge keeps the counts and, per reason, the examples of the earliest
rows, so the report is the single-process one whatever the order the workers saw rows in.
"""
import collections

import apache_beam as beam

from dpsr_tf.data import schema


class ReportFn(beam.CombineFn):
    """Combines report events into (rows_read, rows_kept, {reason: count}, {reason: examples})."""

    def __init__(self, max_examples: int):
        super().__init__()
        self._max = max_examples

    def create_accumulator(self):
        # rows read, rows kept, count per reason, examples per reason, first row per reason
        return [0, 0, collections.Counter(), collections.defaultdict(list), {}]

    def _trim(self, examples):
        return sorted(examples)[:self._max]

    def add_input(self, acc, event):
        kind = event[0]
        if kind == "read":
            acc[0] += 1
        elif kind == "kept":
            acc[1] += 1
        else:
            _, sort_key, reason, text = event
            acc[2][reason] += 1
            acc[4][reason] = min(acc[4].get(reason, sort_key), sort_key)
            examples = acc[3][reason]
            examples.append((sort_key, text))
            if len(examples) > 2 * self._max:
                acc[3][reason] = self._trim(examples)
        return acc

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            out[0] += acc[0]
            out[1] += acc[1]
            out[2].update(acc[2])
            for reason, examples in acc[3].items():
                out[3][reason] = self._trim(out[3][reason] + list(examples))
            for reason, first in acc[4].items():
                out[4][reason] = min(out[4].get(reason, first), first)
        return out

    def extract_output(self, acc):
        # Reasons in order of their first row: the single-process report lists equal counts in
        # that order.
        order = sorted(acc[2], key=lambda r: acc[4][r])
        return (acc[0], acc[1], [(r, acc[2][r]) for r in order],
                {reason: [text for _, text in self._trim(ex)] for reason, ex in acc[3].items()})


def fill_report(report: schema.FileReport, combined) -> None:
    """Puts a ReportFn output into a FileReport (whose notes the caller sets)."""
    if combined is None:
        return
    read, kept, counts, examples = combined
    report.rows_read = read
    report.rows_kept = kept
    for value, count in counts:
        reason = schema.Reason(value)
        report.rejected[reason] = count
        report.examples[reason] = list(examples.get(value, []))
