"""Deterministic train/eval splits: by a hash of the query string (default) or by time.

The query-hash rule is the project's Home Depot protocol, so numbers compare with the
dashboard: a query q is EVAL (test) iff int(md5(q.encode('utf-8')).hexdigest(), 16) % 10 == 0.
All interactions of a query land in the same split, so eval queries are unseen in training.
Cross-validation uses the other residues: fold F of N holds out the queries whose hash % N == F,
so the N folds partition the queries without rewriting any data (fold 0 = the dashboard rule).

The validation split is carved from the training queries (`validation_queries`): a seeded share
of them, by query, leaves training; early stopping and every automatic choice (fusion, dense
feedback, speller) read it, so the eval split (or a fold's held-out queries) is only reported.
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
      method: "query_hash" (eval iff md5(query) % modulus == fold) or "time" (eval iff the
        interaction's timestamp >= cutoff).
      modulus: query_hash: one query in `modulus` goes to eval (10 = the dashboard protocol).
      time_cutoff: time: seconds since the epoch; None = take the `eval_fraction` latest
        interactions.
      eval_fraction: time: fraction of interactions (the latest) for eval when no cutoff.
      fold: query_hash: the residue held out, in [0, modulus) (0 = the dashboard protocol;
        cross-validation runs fold 0..modulus-1).
    """

    method: str = QUERY_HASH
    modulus: int = 10
    time_cutoff: Optional[float] = None
    eval_fraction: float = 0.1
    fold: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"split method must be one of {METHODS}, got {self.method!r}")
        if self.modulus < 2:
            raise ValueError(f"split modulus must be >= 2, got {self.modulus}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0 <= self.fold < self.modulus:
            raise ValueError(f"split fold must be in [0, {self.modulus}) (--split_fold=F with "
                             f"--split_modulus={self.modulus} holds out the queries whose "
                             f"md5 % {self.modulus} == F), got {self.fold}")
        if self.fold and self.method != QUERY_HASH:
            raise ValueError(f"split fold {self.fold} needs method {QUERY_HASH!r} (folds are "
                             f"md5 residues), got method {self.method!r}")

    def rule(self) -> str:
        """query_hash: the eval rule as text (recorded in layout.json and the report)."""
        return (f"eval iff int(md5(query.encode('utf-8')).hexdigest(), 16) % {self.modulus} "
                f"== {self.fold}")


def query_hash(query: str) -> int:
    """int(md5(query as UTF-8)) — the 128-bit hash of the dashboard protocol."""
    return int(hashlib.md5(query.encode("utf-8")).hexdigest(), 16)


def is_eval_query(query: str, modulus: int = 10, fold: int = 0) -> bool:
    """The dashboard rule (fold 0): True iff the query belongs to the eval (test) split."""
    return query_hash(query) % modulus == fold


def eval_queries_mask(queries: Sequence[str], modulus: int = 10, fold: int = 0) -> np.ndarray:
    """[num_queries] bool: is_eval_query of each query."""
    return np.fromiter((query_hash(q) % modulus == fold for q in queries), dtype=bool,
                       count=len(queries))


def sample_train_queries(query_texts: Sequence[str], train_query_rows: np.ndarray,
                         max_queries: int, seed: int) -> np.ndarray:
    """The seeded choice of `max_queries` training queries (a small log cut from a large one).

    The candidates are ordered by their text, then permuted by `seed`, and the first
    `max_queries` are kept: the choice depends only on the set of queries and the seed (not on
    the file order), and for one seed a smaller log is a subset of a larger one.

    Args:
      query_texts: the distinct query strings (indexed by query row).
      train_query_rows: [n] int, the query rows of the train split (repeats allowed).
      max_queries: how many to keep; 0, or at least the number of candidates, keeps all.
      seed: seed of the choice.

    Returns:
      [k] int64 sorted query rows kept, k = min(max_queries, candidates) (all when 0).
    """
    if max_queries < 0:
        raise ValueError(f"max_train_queries must be >= 0 (0 = keep every training query), "
                         f"got {max_queries}")
    rows = np.unique(np.asarray(train_query_rows, np.int64))
    if max_queries == 0 or max_queries >= len(rows):
        return rows
    return _seeded_choice(query_texts, rows, max_queries, seed)


def _seeded_choice(query_texts: Sequence[str], rows: np.ndarray, k: int, rng_seed) -> np.ndarray:
    """k of the distinct query `rows`, sorted: ordered by their text, then permuted by
    np.random.default_rng(rng_seed), so the choice depends only on the set of queries and the
    seed, not on the file order."""
    rows = np.array(sorted(rows.tolist(), key=lambda r: query_texts[r]), np.int64)
    order = np.random.default_rng(rng_seed).permutation(len(rows))
    return np.sort(rows[order[:k]])


# A validation split below this many queries makes early stopping and the choices noisy; the
# carve takes at least this many while it leaves training at least (1 - MAX_VALIDATION_SHARE).
MIN_VALIDATION_QUERIES = 20
MAX_VALIDATION_SHARE = 0.25
MIN_TRAIN_QUERIES_TO_CARVE = 4


def validation_size(num_train_queries: int, fraction: float,
                    min_queries: int = MIN_VALIDATION_QUERIES) -> int:
    """How many of `num_train_queries` (n) training queries the validation split takes.

    ceil(fraction * n), raised towards min_queries but not beyond MAX_VALIDATION_SHARE of n (a
    small log keeps most of its queries for training), at most n - 1; 0 (no validation split)
    with fraction 0 or below MIN_TRAIN_QUERIES_TO_CARVE training queries. Hand-worked
    (fraction 0.1, min 20): n=1141 -> 115, n=100 -> 20, n=40 -> 10, n=8 -> 2, n=3 -> 0;
    (fraction 0.5): n=10 -> 5.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1) (0 = no validation split), "
                         f"got {fraction}")
    if min_queries < 0:
        raise ValueError(f"min_validation_queries must be >= 0, got {min_queries}")
    n = int(num_train_queries)
    if fraction == 0.0 or n < MIN_TRAIN_QUERIES_TO_CARVE:
        return 0
    k = max(int(np.ceil(fraction * n - 1e-9)), min(min_queries, int(MAX_VALIDATION_SHARE * n)))
    return int(min(k, n - 1))


def validation_queries(query_texts: Sequence[str], train_query_rows: np.ndarray,
                       fraction: float, seed: int,
                       min_queries: int = MIN_VALIDATION_QUERIES) -> np.ndarray:
    """The seeded choice of the training queries that form the validation split.

    Like sample_train_queries, the candidates are ordered by their text and permuted by a seed
    derived from `seed`, so the choice depends only on the set of training queries and the
    seed; its size is validation_size. All interactions of a chosen query leave training.

    Args:
      query_texts: the distinct query strings (indexed by query row).
      train_query_rows: [n] int, the query rows of the train split (repeats allowed).
      fraction: the share of training queries to carve (0 = none).
      seed: seed of the choice.
      min_queries: the size below which the carve takes more (validation_size).

    Returns:
      [k] int64 sorted query rows, k = validation_size(distinct train queries, ...).
    """
    rows = np.unique(np.asarray(train_query_rows, np.int64))
    k = validation_size(len(rows), fraction, min_queries)
    if k == 0:
        return np.zeros([0], np.int64)
    # Its own stream: the same seed also orders the train records and cuts --max_train_queries.
    return _seeded_choice(query_texts, rows, k, [seed, 0x7a11d])


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
