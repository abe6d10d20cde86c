"""dpsr compare: request-by-request comparison of systems from `dpsr evaluate --per_query` files.

`dpsr compare --per_query=a.jsonl,b.jsonl [--baseline=bm25] [--metrics=recall@100,ndcg@10]`
(LABEL=FILE renames a file's system: `--per_query=title=a.jsonl,all=b.jsonl`)
aligns the requests every system answered (same layout and split: matched by split, query text
and user) and prints, per metric and pair of systems, the mean difference, its paired bootstrap
interval and the sign-flip p-value (dpsr_tf/evaluation/paired.py). `--output` writes them as
JSON.
"""
import json

from absl import flags

from dpsr_tf.evaluation import paired as paired_lib
from dpsr_tf.evaluation import per_query as per_query_lib

_PER_QUERY = flags.DEFINE_list("per_query", None, "Per-query files written by `dpsr evaluate "
                               "--per_query`, comma-separated; LABEL=FILE names a file's "
                               "system LABEL (two runs of one system: title=a.jsonl,all=b.jsonl).")
_BASELINE = flags.DEFINE_string("baseline", None, "Compare every system against this one "
                                "(default: every pair).")
_METRICS = flags.DEFINE_list("metrics", list(paired_lib.DEFAULT_METRICS), "Metrics to compare.")
_SAMPLES = flags.DEFINE_integer("samples", 10000, "Bootstrap resamples and random sign flips.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the resampling.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the comparisons as JSON here.")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr compare: unexpected arguments {argv[1:]}")
    if not _PER_QUERY.value:
        raise SystemExit("dpsr compare: give --per_query=FILE[,FILE...] (files of `dpsr "
                         "evaluate --per_query`)")
    try:
        keys, per_system = per_query_lib.align(per_query_lib.read_jsonl(_PER_QUERY.value))
        comparisons = paired_lib.compare_systems(per_system, _METRICS.value, _BASELINE.value,
                                                 seed=_SEED.value, num_samples=_SAMPLES.value)
    except (OSError, ValueError) as e:
        raise SystemExit(f"dpsr compare: {e}") from None
    if not comparisons:
        raise SystemExit(f"dpsr compare: no system pair has any of the metrics {_METRICS.value}")
    print(f"{len(keys)} requests answered by every system ({', '.join(per_system)})")
    for c in comparisons:
        print("  " + c.line())
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            json.dump({"requests": len(keys), "comparisons": [c.to_json() for c in comparisons]},
                      f, indent=2)
