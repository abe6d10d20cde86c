"""Ordered item statistics of the TRAIN candidates: each candidate's item impressions and label
sum count only the sessions before its own, in a fixed order (time, then a seeded shuffle).

Why not leave-one-session-out: an item's leave-one-out mean label is its full mean minus a
known function of the row's own label, so a ranker that can tell items apart (title tokens,
the candidate's item embedding of the "user" group) reads the
row's label back from the feature: on training rows a lower mean means a click. Eval rows and
the servable see the full TRAIN statistics, where that signal is not there, so the ranker
learns a rule that does not transfer. Counting only earlier sessions (the ordered target
statistics of CatBoost) leaves a row's features independent of its own label and of every
later one: what a log gives at serving time too, statistics from the past.

    own_n, own_l = later_contributions(table, counted, seed)
    # the feature graph subtracts them from the full TRAIN tables (FeatureExtractor.run)
"""
from typing import Tuple

import numpy as np


def session_order(table, seed: int) -> np.ndarray:
    """[S] int64 position of each session in the order: by timestamp, ties (and logs without
    times) by a seeded shuffle."""
    shuffle = np.random.default_rng(seed).permutation(len(table))
    order = np.lexsort((shuffle, np.asarray(table.timestamps, np.float64)))
    position = np.empty(len(table), np.int64)
    position[order] = np.arange(len(table))
    return position


def later_contributions(table, counted: np.ndarray, seed: int = 0
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """What the full statistics hold beyond the sessions before each candidate's own.

    Args:
      table: the TRAIN SessionTable the statistics were counted from.
      counted: [C] bool, the candidates the statistics counted (shown ones).
      seed: the tie-break shuffle of session_order.

    Returns:
      own_impressions [C] float32, own_label_sum [C] float32: for candidate c with item r in
      the session at position k, the counted impressions of r (and their label sum) in
      sessions at positions >= k, c's own included.
    """
    counted = np.asarray(counted, bool)
    num = len(table)
    pos = session_order(table, seed)[table.session_of_candidate()]            # [C]
    items = np.asarray(table.item_rows, np.int64)
    key = items * (num + 1) + pos                                             # item, then time
    c_key = key[counted]
    sort = np.argsort(c_key, kind="stable")
    c_key = c_key[sort]
    # suffix[i] = sums over sorted counted entries i.. (end of the array).
    ones = np.ones(len(c_key))
    labels = np.asarray(table.labels, np.float64)[counted][sort]
    suffix_n = np.concatenate([np.cumsum(ones[::-1])[::-1], [0.0]])
    suffix_l = np.concatenate([np.cumsum(labels[::-1])[::-1], [0.0]])
    start = np.searchsorted(c_key, key, side="left")                          # own position on
    end = np.searchsorted(c_key, (items + 1) * (num + 1), side="left")        # end of the item
    own_n = suffix_n[start] - suffix_n[end]
    own_l = suffix_l[start] - suffix_l[end]
    return own_n.astype(np.float32), own_l.astype(np.float32)
