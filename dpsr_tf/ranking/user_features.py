"""The user side of DPR's features: each session's user profile ids and click-stream history,
and the candidates' categorical ids the profile is crossed with.

Profile: the user's categorical features as the layout stores them (users/features.npy, ids
0 = unknown; a session without a known user gets zeros, as the servable does for an absent
user_<name> input).

History: the user's positives (users/history_items.npy, in time order), the same sequence the
DPSR-h query tower reads. A session's history is the prefix its user had before the session:
the `history_end` of the user's earliest logged interaction with the session's query (records
of every split but the catalog's pseudo-queries), so it holds only items clicked strictly before that interaction and never the
session's own clicks. A session whose (user, query) is not in the log gets no history (counted
in `SessionUsers.unmatched`). Only the last `history_length` items are kept, as the servable
keeps the last `history_length` known ids of a request's user_history.
"""
import dataclasses
from typing import Dict, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib


@dataclasses.dataclass
class SessionUsers:
    """Per-session user inputs of a SessionTable.

    Attributes:
      profile: [S, U] int64 profile feature ids (layout column order; 0 = unknown).
      history: [S, history_length] int64 item rows of the last clicks, oldest first, -1 pads
        the end of a row.
      unmatched: sessions with a user whose (user, query) has no logged interaction.
    """

    profile: np.ndarray
    history: np.ndarray
    unmatched: int = 0


def last_n(items: np.ndarray, splits: np.ndarray, ends: np.ndarray, rows: np.ndarray,
           history_length: int) -> np.ndarray:
    """[S, history_length] int64: for each s the last history_length of
    items[splits[rows[s]] : splits[rows[s]] + ends[s]] (left-aligned, -1 pad); rows[s] < 0 or
    ends[s] == 0 give an all -1 row."""
    out = np.full([len(rows), history_length], -1, np.int64)
    if history_length <= 0:
        return out
    for s, (u, end) in enumerate(zip(rows, ends)):
        if u < 0 or end <= 0:
            continue
        base = int(splits[u])
        picked = items[base + max(0, int(end) - history_length):base + int(end)]
        out[s, :len(picked)] = picked
    return out


def item_categories(spec, names) -> np.ndarray:
    """[num_items, len(names)] int64 categorical ids (0 = unknown) of every layout item, for
    the item columns `names` (what the "user" group crosses the profile with)."""
    if not names:
        return np.zeros([spec.num_items, 0], np.int64)
    table = np.load(spec.path(layout_lib.ITEM_FEATURES)).astype(np.int64)
    columns = layout_lib.feature_columns(spec, "item")
    return table[:, [columns.index(n) for n in names]]


def _first_history_end(spec) -> Dict[Tuple[int, int], int]:
    """(user_row, query_row) -> the smallest history_end of that user's records of the query."""
    out: Dict[Tuple[int, int], int] = {}
    for split in sorted(spec.record_files):
        if split == "pseudo":
            continue
        rec = layout_lib.read_records(spec, split)
        rec = rec[rec["user_row"] >= 0]
        for u, q, end in zip(rec["user_row"].tolist(), rec["query_row"].tolist(),
                             rec["history_end"].tolist()):
            key = (u, q)
            if key not in out or end < out[key]:
                out[key] = end
    return out


def session_users(spec, tables, history_length: int) -> Dict[str, SessionUsers]:
    """SessionUsers of each named SessionTable ({"train": table, ...}) over layout `spec`."""
    num_users = int(spec.num_users)
    features = (np.load(spec.path(layout_lib.USER_FEATURES)).astype(np.int64)
                if num_users and spec.user_features else np.zeros([num_users, 0], np.int64))
    items, splits = (layout_lib.load_user_histories(spec) if num_users
                     else (np.zeros(0, np.int32), np.zeros(1, np.int64)))
    query_row = {q: r for r, q in reversed(list(enumerate(layout_lib.load_queries(spec))))}
    first_end = _first_history_end(spec) if history_length > 0 and num_users else {}
    out = {}
    for name, table in tables.items():
        rows = np.asarray(table.user_rows, np.int64)
        known = (rows >= 0) & (rows < num_users)
        profile = np.zeros([len(rows), features.shape[1]], np.int64)
        profile[known] = features[rows[known]]
        ends = np.zeros(len(rows), np.int64)
        unmatched = 0
        if first_end:
            for s in np.flatnonzero(known):
                end = first_end.get((int(rows[s]), query_row.get(table.queries[s], -1)))
                if end is None:
                    unmatched += 1
                else:
                    ends[s] = end
        history = last_n(items, splits, ends, np.where(known, rows, -1), history_length)
        out[name] = SessionUsers(profile, history, unmatched)
    return out
