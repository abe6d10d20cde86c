"""Deterministic train/eval splits: by a hash of the query string (default) or by time.

The query-hash rule is the project's Home Depot protocol, so numbers compare with the
dashboard: a query q is EVAL (test) iff int(md5(q.encode('utf-8')).hexdigest(), 16) % 10 == 0.
All interactions of a query land in the same split, so eval queries are unseen in training.
"""
import dataclasses
import hashlib
from typing import Optional, Sequence

import numpy as np

QUERY_HASH = "query_hash"
TIME = "time"
METHODS = (QUERY_HASH, TIME)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How `dpsr prepare` splits interactions.

    Attributes:
      method: "query_hash" (eval iff md5(query) % modulus == 0) or "time" (eval iff the
        interaction's timestamp >= cutoff).
      modulus: query_hash: one query in `modulus` goes to eval (10 = the dashboard protocol).
      time_cutoff: time: seconds since the epoch; None = take the `eval_fraction` latest
        interactions.
      eval_fraction: time: fraction of interactions (the latest) for eval when no cutoff.
    """

    method: str = QUERY_HASH
    modulus: int = 10
    time_cutoff: Optional[float] = None
    eval_fraction: float = 0.1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"split method must be one of {METHODS}, got {self.method!r}")
        if self.modulus < 2:
            raise ValueError(f"split modulus must be >= 2, got {self.modulus}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


def query_hash(query: str) -> int:
    """int(md5(query as UTF-8)) — the 128-bit hash of the dashboard protocol."""
    return int(hashlib.md5(query.encode("utf-8")).hexdigest(), 16)


def is_eval_query(query: str, modulus: int = 10) -> bool:
    """The dashboard rule: True iff the query belongs to the eval (test) split."""
    return query_hash(query) % modulus == 0


def eval_queries_mask(queries: Sequence[str], modulus: int = 10) -> np.ndarray:
    """[num_queries] bool: is_eval_query of each query."""
    return np.fromiter((query_hash(q) % modulus == 0 for q in queries), dtype=bool,
                       count=len(queries))


def time_cutoff(timestamps: np.ndarray, eval_fraction: float) -> float:
    """The timestamp from which the latest `eval_fraction` of interactions are eval.

    Args:
      timestamps: [num_interactions] float64 seconds.

    Returns:
      cutoff: eval iff timestamp >= cutoff (ties go to eval, so the fraction may be larger).
    """
    if len(timestamps) == 0:
        return 0.0
    k = int(np.floor(len(timestamps) * (1.0 - eval_fraction)))
    k = min(max(k, 0), len(timestamps) - 1)
    return float(np.partition(timestamps, k)[k])
