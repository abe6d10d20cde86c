"""Evaluation requests of a layout split, by the dashboard protocol, and its labelled pairs.

A request is a distinct (query, user) of the split's interaction records; its relevant items
are the items of its positive interactions with gain >= a threshold (the layout's
eval_min_gain by default). `load_eval_set` gives the requests for full-corpus Recall/nDCG/MRR,
`load_labeled_pairs` every labelled (query, user, item) for AUC (docs/data_format.md).
`choice_split` names the split that early stopping and the automatic choices read.
"""
import dataclasses
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib


@dataclasses.dataclass
class EvalSet:
    """Full-corpus retrieval requests of a split with their relevant items and graded gains.

    A request is a (query, user) pair (user_row -1 for anonymous interactions); its relevant
    items are the items of its positive interactions (click or human positive) with
    gain >= min_gain, each with the largest such gain. Requests without a relevant item are
    left out (the dashboard protocol).

    Attributes:
      queries: [Q] query texts.
      query_rows: [Q] int64 query rows (index into load_queries / query tokens).
      user_rows: [Q] int64 user rows, -1 = no user.
      history_ends: [Q] int64 history_end of the request's first interaction (for user_history).
      relevant_splits: [Q + 1] int64; request i's relevant items are
        relevant_rows[relevant_splits[i]:relevant_splits[i + 1]] (sorted by item row).
      relevant_rows: [R] int64 item rows.
      relevant_gains: [R] float32 graded gains (nDCG).
      min_gain: the threshold used.
    """

    queries: List[str]
    query_rows: np.ndarray
    user_rows: np.ndarray
    history_ends: np.ndarray
    relevant_splits: np.ndarray
    relevant_rows: np.ndarray
    relevant_gains: np.ndarray
    min_gain: float

    def __len__(self) -> int:
        return len(self.query_rows)

    def relevant(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(item rows [n] int64, gains [n] float32) of request i."""
        lo, hi = self.relevant_splits[i], self.relevant_splits[i + 1]
        return self.relevant_rows[lo:hi], self.relevant_gains[lo:hi]


def choice_split(layout, log=logging.warning) -> str:
    """The split that early stopping and every automatic choice (fusion, dense feedback,
    speller) are made on: the layout's validation split, carved from the training queries.

    A layout without one (prepared before it existed, or with --validation_fraction=0, or too
    few training queries) falls back to the eval split, with a warning through `log`: choices
    made on the queries that are then reported make those numbers optimistic.

    Args:
      layout: a LayoutSpec or a layout directory.
    """
    spec = layout_lib.spec_of(layout)
    if layout_lib.VALIDATION_SPLIT in spec.record_files:
        return layout_lib.VALIDATION_SPLIT
    log(f"{spec.layout_dir} has no {layout_lib.VALIDATION_SPLIT!r} split (prepared before it "
        f"existed, or with --validation_fraction=0): early stopping and the automatic choices "
        f"use the {layout_lib.EVAL_SPLIT!r} split, so its reported numbers are optimistic; "
        f"re-run `dpsr prepare` to carve one from the training queries")
    return layout_lib.EVAL_SPLIT


def watched_split(requested: str, layout, log=logging.warning) -> str:
    """The split a training run evaluates for early stopping, from TrainConfig.eval_split.

    "validation" (the default) is choice_split's answer (the eval split on a layout without a
    validation split, with its warning); "eval" on a layout that has a validation split is
    kept, with a warning that the numbers reported on it are then optimistic.

    Raises:
      ValueError: a split the layout does not have.
    """
    spec = layout_lib.spec_of(layout)
    if requested == layout_lib.VALIDATION_SPLIT:
        return choice_split(spec, log)
    if requested not in spec.record_files:
        raise ValueError(f"eval_split={requested!r}: {spec.layout_dir} has the splits "
                         f"{list(spec.record_files)}; early stopping reads "
                         f"{layout_lib.VALIDATION_SPLIT!r} (the default)")
    if requested == layout_lib.EVAL_SPLIT and layout_lib.VALIDATION_SPLIT in spec.record_files:
        log(f"eval_split={requested!r}: early stopping watches the split that is reported, so "
            f"its numbers are optimistic; the default, {layout_lib.VALIDATION_SPLIT!r}, is "
            f"carved from the training queries")
    return requested


_GAIN_EPS = 1e-4   # gains are float32 in the records; "1.67" must pass ">= 1.67"


def load_eval_set(layout, split: str = "eval", min_gain: Optional[float] = None) -> EvalSet:
    """Requests of a split with relevant items and gains, for Recall/nDCG/MRR over the corpus.

    Args:
      layout: a LayoutSpec or a layout directory.
      split: "eval" (or "train").
      min_gain: relevant iff positive and gain >= min_gain; None = spec.eval_min_gain.
        Home Depot dashboard protocol: relevance >= 2.67 <=> gain >= 1.67.

    Returns:
      EvalSet, requests ordered by first appearance in the split.
    """
    spec = layout_lib.spec_of(layout)
    min_gain = spec.eval_min_gain if min_gain is None else float(min_gain)
    if not np.isfinite(min_gain):  # NaN: nothing would be relevant, every metric 0
        raise ValueError(f"min_gain must be a finite number, got {min_gain}")
    rec = layout_lib.read_records(spec, split)
    positive = rec["label_kind"] != 2
    keep = positive & (rec["gain"] >= np.float32(min_gain - _GAIN_EPS))
    # Requests = distinct (query_row, user_row), in order of first appearance in the split.
    key = rec["query_row"].astype(np.int64) * (spec.num_users + 1) + (rec["user_row"] + 1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")            # request ids by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    request = rank[inverse]                             # [n] request of each record
    # Relevant (request, item) pairs with their max gain.
    r, items, gains = request[keep], rec["item_row"][keep].astype(np.int64), rec["gain"][keep]
    pair = r * spec.num_items + items
    sort = np.lexsort((-gains, pair))
    pair, gains = pair[sort], gains[sort]
    first_of_pair = np.ones(len(pair), bool)
    first_of_pair[1:] = pair[1:] != pair[:-1]
    pair, gains = pair[first_of_pair], gains[first_of_pair]
    pair_request, pair_item = pair // spec.num_items, pair % spec.num_items
    counts = np.bincount(pair_request, minlength=len(order))
    has_relevant = counts > 0
    q_first = first[order][has_relevant]
    splits = np.zeros(int(has_relevant.sum()) + 1, np.int64)
    np.cumsum(counts[has_relevant], out=splits[1:])
    queries = layout_lib.load_queries(spec)
    query_rows = rec["query_row"][q_first].astype(np.int64)
    return EvalSet(
        queries=[queries[q] for q in query_rows],
        query_rows=query_rows,
        user_rows=rec["user_row"][q_first].astype(np.int64),
        history_ends=rec["history_end"][q_first].astype(np.int64),
        relevant_splits=splits,
        relevant_rows=pair_item.astype(np.int64),
        relevant_gains=gains.astype(np.float32),
        min_gain=min_gain,
    )


def load_labeled_pairs(layout, split: str = "eval") -> Dict[str, np.ndarray]:
    """Every labelled (query, user, item) of a split, e.g. for AUC on labelled pairs.

    Returns:
      dict of [n] arrays: query_row int64, user_row int64, item_row int64, label float32
      (1 = click / human positive, 0 = human negative), gain float32.
    """
    rec = layout_lib.read_records(layout_lib.spec_of(layout), split)
    return {
        "query_row": rec["query_row"].astype(np.int64),
        "user_row": rec["user_row"].astype(np.int64),
        "item_row": rec["item_row"].astype(np.int64),
        "label": (rec["label_kind"] != 2).astype(np.float32),
        "gain": rec["gain"].astype(np.float32),
    }
