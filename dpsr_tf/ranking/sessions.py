"""Sessions for pairwise ranking (DPR): the optional impressions file, its reader, the on-disk
sessions table, and the pairs built from it.

A session is one (query, user, time) with the candidates that were shown and a graded label per
candidate (higher = preferred: e.g. 0 shown, 1 clicked, 2 ordered; Home Depot: relevance - 1).
The impressions file (docs/data_format.md, "Impressions") holds one row per shown candidate:

    session_id  query  item_id  label  [user_id]  [timestamp]  [position]

`prepare_sessions` reads it against a prepared training layout (item ids -> layout rows, user ids
-> user rows), splits sessions with the layout's own split rule (the query-hash rule of the
dashboard protocol, so a query is in the same split for retrieval and ranking) and writes
`<output>/sessions.json` and `<output>/<split>.npz` (SessionTable arrays).

Pairs (the paper's training triples (q, a, b)): every two candidates of a session with different
labels; a session contributes at most `max_pairs_per_session` of them, drawn with a seeded RNG;
each pair's side order is drawn at random, label = 1 iff side a is preferred.
"""
import csv
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import split as split_lib

SESSIONS_JSON = "sessions.json"
FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("session_id", "query", "item_id", "label")
OPTIONAL_COLUMNS = ("user_id", "timestamp", "position")


class SessionsError(ValueError):
    """A bad impressions file or sessions directory (the message names file, line and fix)."""


@dataclasses.dataclass
class SessionTable:
    """The sessions of one split as ragged numpy arrays.

    Attributes:
      session_ids: [S] external session ids.
      queries: [S] query texts.
      user_rows: [S] int64 layout user rows, -1 = no user.
      timestamps: [S] float64 seconds (0 when absent).
      splits: [S + 1] int64; session s holds candidates splits[s]:splits[s + 1].
      item_rows: [C] int64 layout item rows of the shown candidates (shown order).
      labels: [C] float32 graded labels (higher = preferred).
      positions: [C] int32 shown positions (0-based; the file order when absent).
    """

    session_ids: List[str]
    queries: List[str]
    user_rows: np.ndarray
    timestamps: np.ndarray
    splits: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.session_ids)

    @property
    def num_candidates(self) -> int:
        return int(self.splits[-1])

    def session_of_candidate(self) -> np.ndarray:
        """[C] int64 session index of each candidate."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.splits))

    def candidates(self, s: int) -> Tuple[np.ndarray, np.ndarray]:
        """(item rows [n] int64, labels [n] float32) of session s."""
        lo, hi = self.splits[s], self.splits[s + 1]
        return self.item_rows[lo:hi], self.labels[lo:hi]

    def save(self, path: str) -> None:
        np.savez(path, session_ids=np.array(self.session_ids, dtype=object).astype(str),
                 queries=np.array(self.queries, dtype=object).astype(str),
                 user_rows=self.user_rows, timestamps=self.timestamps, splits=self.splits,
                 item_rows=self.item_rows, labels=self.labels, positions=self.positions)

    @classmethod
    def load(cls, path: str) -> "SessionTable":
        if not os.path.isfile(path):
            raise SessionsError(f"{path}: no such sessions file; write it with "
                                f"`dpsr prepare-sessions`")
        with np.load(path) as z:
            return cls(session_ids=[str(s) for s in z["session_ids"]],
                       queries=[str(q) for q in z["queries"]],
                       user_rows=z["user_rows"].astype(np.int64),
                       timestamps=z["timestamps"].astype(np.float64),
                       splits=z["splits"].astype(np.int64),
                       item_rows=z["item_rows"].astype(np.int64),
                       labels=z["labels"].astype(np.float32),
                       positions=z["positions"].astype(np.int32))

    @classmethod
    def from_lists(cls, sessions: Sequence[dict]) -> "SessionTable":
        """Builds a table from dicts {"query", "items" [n], "labels" [n], optional "session_id",
        "user_row", "timestamp", "positions"} (tests, synthetic data)."""
        lengths = [len(s["items"]) for s in sessions]
        for i, s in enumerate(sessions):
            if len(s["labels"]) != len(s["items"]):
                raise SessionsError(f"session {i}: {len(s['items'])} items but "
                                    f"{len(s['labels'])} labels")
        splits = np.zeros(len(sessions) + 1, np.int64)
        np.cumsum(lengths, out=splits[1:])
        cat = lambda key, dtype: (np.concatenate([np.asarray(s[key], dtype) for s in sessions])
                                  if sessions else np.zeros(0, dtype))
        return cls(
            session_ids=[str(s.get("session_id", i)) for i, s in enumerate(sessions)],
            queries=[s["query"] for s in sessions],
            user_rows=np.array([s.get("user_row", -1) for s in sessions], np.int64),
            timestamps=np.array([s.get("timestamp", 0.0) for s in sessions], np.float64),
            splits=splits, item_rows=cat("items", np.int64), labels=cat("labels", np.float32),
            positions=(np.concatenate([np.asarray(s.get("positions", np.arange(len(s["items"]))),
                                                  np.int32) for s in sessions])
                       if sessions else np.zeros(0, np.int32)))


@dataclasses.dataclass
class Pairs:
    """Training pairs: candidate a and candidate b of the same session.

    Attributes:
      session: [P] int64 session index.
      a, b: [P] int64 candidate indices (into the SessionTable's candidate arrays).
      label: [P] float32, 1 iff a's label > b's label.
    """

    session: np.ndarray
    a: np.ndarray
    b: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.session)


def build_pairs(table: SessionTable, max_pairs_per_session: int = 32, seed: int = 0) -> Pairs:
    """Every pair of candidates with different labels inside each session, capped per session.

    Args:
      table: the sessions.
      max_pairs_per_session: a session with more pairs contributes a seeded uniform sample of
        this many (0 = no cap).
      seed: the RNG seed (sampling and side order).

    Returns:
      Pairs, sessions in order; inside a session pairs are ordered by (i, j), i < j in shown
      order, before the side swap.
    """
    if max_pairs_per_session < 0:
        raise ValueError(f"max_pairs_per_session must be >= 0, got {max_pairs_per_session}")
    rng = np.random.default_rng(seed)
    out_s, out_a, out_b = [], [], []
    for s in range(len(table)):
        lo, hi = int(table.splits[s]), int(table.splits[s + 1])
        n = hi - lo
        if n < 2:
            continue
        i, j = np.triu_indices(n, k=1)
        labels = table.labels[lo:hi]
        keep = labels[i] != labels[j]
        i, j = i[keep], j[keep]
        if max_pairs_per_session and len(i) > max_pairs_per_session:
            pick = np.sort(rng.choice(len(i), max_pairs_per_session, replace=False))
            i, j = i[pick], j[pick]
        out_s.append(np.full(len(i), s, np.int64))
        out_a.append(i + lo)
        out_b.append(j + lo)
    if not out_s:
        z = np.zeros(0, np.int64)
        return Pairs(z, z, z, np.zeros(0, np.float32))
    session, a, b = (np.concatenate(x).astype(np.int64) for x in (out_s, out_a, out_b))
    swap = rng.random(len(a)) < 0.5
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    label = (table.labels[a] > table.labels[b]).astype(np.float32)
    return Pairs(session, a, b, label)


# ---------------------------------------------------------------------------------------------
# The impressions file.

def _float(value: str, path: str, line: int, column: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise SessionsError(f"{path}:{line}: column {column!r} must be a number, got "
                            f"{value!r}") from None
    if not np.isfinite(x):
        raise SessionsError(f"{path}:{line}: column {column!r} must be finite, got {value!r}")
    return x


def read_impressions(path: str, item_rows: Dict[str, int],
                     user_rows: Optional[Dict[str, int]] = None,
                     log=print) -> Tuple[SessionTable, dict]:
    """Reads an impressions file (TSV, or CSV by extension) into one SessionTable.

    Rows of a session may be anywhere in the file; sessions keep the order of their first row,
    candidates the `position` column (or the file order). A candidate whose item is not in the
    catalog is dropped and counted; a session is dropped when fewer than two candidates remain.

    Raises:
      SessionsError: missing file or column, a bad number, a session with two queries or users.
    """
    if not os.path.isfile(path):
        raise SessionsError(f"{path}: no such impressions file")
    delimiter = "," if path.endswith(".csv") else "\t"
    counts = {"rows_read": 0, "unknown_items": 0, "sessions_read": 0,
              "sessions_too_small": 0, "unknown_users": 0}
    sessions: Dict[str, dict] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if delimiter == "\t"
                  else csv.reader(f))
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SessionsError(f"{path}:1: empty file; the first line must name the columns "
                                f"{', '.join(REQUIRED_COLUMNS)}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SessionsError(f"{path}:1: header {header} lacks required column(s) {missing}; "
                                f"an impressions file has {', '.join(REQUIRED_COLUMNS)} and "
                                f"optionally {', '.join(OPTIONAL_COLUMNS)}")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in header}
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise SessionsError(f"{path}:{line}: {len(fields)} fields, the header has "
                                    f"{len(header)}")
            counts["rows_read"] += 1
            sid, query, item = (fields[col[c]] for c in ("session_id", "query", "item_id"))
            label = _float(fields[col["label"]], path, line, "label")
            user = fields[col["user_id"]] if "user_id" in col else ""
            s = sessions.get(sid)
            if s is None:
                ts = (_float(fields[col["timestamp"]], path, line, "timestamp")
                      if "timestamp" in col and fields[col["timestamp"]] else 0.0)
                s = sessions[sid] = {"query": query, "user": user, "timestamp": ts, "items": [],
                                     "labels": [], "positions": []}
            elif s["query"] != query or s["user"] != user:
                raise SessionsError(
                    f"{path}:{line}: session {sid!r} has query {query!r} user {user!r} but an "
                    f"earlier row has query {s['query']!r} user {s['user']!r}; a session is "
                    f"one (query, user, time): give the other rows another session_id")
            row = item_rows.get(item)
            if row is None:
                counts["unknown_items"] += 1
                continue
            pos = (int(_float(fields[col["position"]], path, line, "position"))
                   if "position" in col else len(s["positions"]))
            s["items"].append(row)
            s["labels"].append(label)
            s["positions"].append(pos)
    counts["sessions_read"] = len(sessions)
    kept = []
    for sid, s in sessions.items():
        if len(s["items"]) < 2:
            counts["sessions_too_small"] += 1
            continue
        order = np.argsort(np.asarray(s["positions"]), kind="stable")
        u = -1
        if s["user"]:
            u = (user_rows or {}).get(s["user"], -1)
            counts["unknown_users"] += int(u < 0)
        kept.append({"session_id": sid, "query": s["query"], "user_row": u,
                     "timestamp": s["timestamp"],
                     "items": np.asarray(s["items"])[order],
                     "labels": np.asarray(s["labels"])[order],
                     "positions": np.asarray(s["positions"])[order]})
    log(f"{path}: {counts['rows_read']:,} rows, {len(kept):,} sessions kept of "
        f"{counts['sessions_read']:,} ({counts['unknown_items']:,} rows with an item not in the "
        f"catalog, {counts['sessions_too_small']:,} sessions with < 2 candidates)")
    return SessionTable.from_lists(kept), counts


def subset(table: SessionTable, mask: np.ndarray) -> SessionTable:
    """The sessions of `table` where mask [S] bool is True, in order, with their candidates."""
    keep = np.flatnonzero(mask)
    return SessionTable.from_lists([{
        "session_id": table.session_ids[s], "query": table.queries[s],
        "user_row": int(table.user_rows[s]), "timestamp": float(table.timestamps[s]),
        "items": table.candidates(s)[0], "labels": table.candidates(s)[1],
        "positions": table.positions[table.splits[s]:table.splits[s + 1]]} for s in keep])


def split_mask(table: SessionTable, split: dict) -> np.ndarray:
    """[S] bool: the session is in the eval (test) split under a layout's split rule."""
    method = split.get("method", split_lib.QUERY_HASH)
    if method == split_lib.QUERY_HASH:
        return split_lib.eval_queries_mask(table.queries, int(split.get("modulus", 10)),
                                           int(split.get("fold", 0)))
    cutoff = split.get("time_cutoff")
    if cutoff is None:
        raise SessionsError(f"the layout's split {split} has no time cutoff to split sessions "
                            f"by; prepare the layout with --split_time_cutoff")
    return table.timestamps >= float(cutoff)


def prepare_sessions(layout_dir: str, impressions: str, output: str, log=print) -> dict:
    """impressions file + training layout -> <output>/{sessions.json, train.npz, eval.npz}.

    Returns:
      the sessions.json contents.
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    item_rows = layout_lib.load_item_id_map(spec)
    user_rows = {u: r for r, u in enumerate(layout_lib.read_lines(spec.path(layout_lib.USER_IDS)))}
    table, counts = read_impressions(impressions, item_rows, user_rows, log=log)
    is_eval = split_mask(table, spec.split)
    os.makedirs(output, exist_ok=True)
    info = {"format_version": FORMAT_VERSION, "layout_dir": spec.layout_dir,
            "impressions": os.path.abspath(impressions), "split": spec.split,
            "counts": counts, "splits": {}}
    for name, mask in (("train", ~is_eval), ("eval", is_eval)):
        part = subset(table, mask)
        part.save(os.path.join(output, f"{name}.npz"))
        distinct = sum(len(np.unique(part.candidates(s)[1])) > 1 for s in range(len(part)))
        info["splits"][name] = {"sessions": len(part), "candidates": part.num_candidates,
                                "sessions_with_two_labels": int(distinct)}
        log(f"  {name}: {len(part):,} sessions, {part.num_candidates:,} candidates, "
            f"{distinct:,} with >= 2 distinct labels")
    with open(os.path.join(output, SESSIONS_JSON), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


def load_sessions(sessions_dir: str, split: str) -> SessionTable:
    """The SessionTable of one split ("train" or "eval") of a `dpsr prepare-sessions` output."""
    return SessionTable.load(os.path.join(sessions_dir, f"{split}.npz"))


def read_sessions_info(sessions_dir: str) -> dict:
    path = os.path.join(sessions_dir, SESSIONS_JSON)
    if not os.path.isfile(path):
        raise SessionsError(f"{path} not found: {sessions_dir} is not a sessions directory; "
                            f"write one with `dpsr prepare-sessions`")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def add_retrieved_negatives(table: SessionTable, retrieved: np.ndarray, per_session: int,
                            label: float, seed: int = 0) -> SessionTable:
    """Each session gains up to `per_session` items that retrieval returned for its query but
    the session did not show, with `label` (below every shown label), appended after the shown
    candidates.

    Judged or logged sessions only hold items a user (or rater) saw; a re-ranker serves the
    top N of retrieval, most of which nobody judged. Without such items in training it never
    learns to push them down (docs/ranking.md).

    Args:
      table: the sessions.
      retrieved: [S, K] int64 item rows retrieved for each session's query (-1 = none).
      per_session: items added per session (a seeded uniform draw among the unshown).
      label: their label.
    """
    rng = np.random.default_rng(seed)
    out = []
    for s in range(len(table)):
        items, labels = table.candidates(s)
        shown = set(items.tolist())
        pool = [r for r in retrieved[s].tolist() if r >= 0 and r not in shown]
        add = (rng.choice(pool, min(per_session, len(pool)), replace=False).tolist()
               if pool and per_session > 0 else [])
        pos = table.positions[table.splits[s]:table.splits[s + 1]]
        out.append({"session_id": table.session_ids[s], "query": table.queries[s],
                    "user_row": int(table.user_rows[s]),
                    "timestamp": float(table.timestamps[s]),
                    "items": list(items) + add, "labels": list(labels) + [label] * len(add),
                    "positions": list(pos) + list(range(len(pos), len(pos) + len(add)))})
    return SessionTable.from_lists(out)
