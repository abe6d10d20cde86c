"""The fusion objective: which metrics' mean chooses a hybrid servable's fusion.

Apart from fusion_choice (which loads TensorFlow-heavy evaluation code) so that the CLIs can
take its default as a flag default at import time, and both say the same.
"""
import re
from typing import Sequence, Tuple

# The metrics whose mean a candidate is chosen by (the dashboard's headline numbers); an export
# or crossval may name others (`--fusion_objective`, parse_objective): a servable that feeds a
# re-ranker is judged by what reaches the ranker, its recall.
OBJECTIVE = ("recall@100", "recall@1000", "ndcg@10")
# What parse_objective accepts: Recall@N for any N, and the two cut-offs every evaluation has.
_OBJECTIVE_METRIC = re.compile(r"recall@[1-9][0-9]*|ndcg@10|mrr@10")


def parse_objective(names: Sequence[str]) -> Tuple[str, ...]:
    """The objective a list of metric names gives, checked before any work.

    Raises:
      ValueError: an empty list, a repeated name or one that is not recall@N, ndcg@10, mrr@10.
    """
    out = tuple(n.strip().lower() for n in names if n.strip())
    if not out:
        raise ValueError("the fusion objective names no metric; give e.g. "
                         "recall@100,recall@1000 or recall@100,recall@1000,ndcg@10")
    for name in out:
        if not _OBJECTIVE_METRIC.fullmatch(name):
            raise ValueError(f"fusion objective metric {name!r} is not one of recall@N (N >= 1), "
                             "ndcg@10, mrr@10")
    if len(set(out)) != len(out):
        raise ValueError(f"fusion objective {list(out)} names a metric twice")
    return out
