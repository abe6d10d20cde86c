"""Per-row and per-key validation of the three input files, shared by both prepare paths.

`prepare.py` (one process) and `beam/` (Apache Beam) call the same functions, so a row is kept
or rejected, with the same reason and message, whichever path read it. A row's fate depends on
the row alone, on the earlier rows with the same id (duplicates: `resolve_candidate`), and on
the item/user tables (`interaction_rejection`); nothing else, so it can be decided per key.

A row's position is (file index, line); "earlier" is always position order, which is the file
order of the single-process reader.
"""
import dataclasses
from typing import Optional, Tuple, Union

from dpsr_tf.data import schema
from dpsr_tf.data.readers import Record
from dpsr_tf.data.schema import LabelKind, Reason


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A rejected row: `FileReport.reject(reason, line, message)` with `path` in the example."""

    reason: Reason
    path: str
    line: int
    message: str


# ---------------------------------------------------------------------------------------------
# Items and users files.

@dataclasses.dataclass(frozen=True)
class TableColumns:
    """Where the columns of an items or users file are."""

    is_items: bool
    id_col: int
    title_col: int                 # -1 for users
    feature_cols: Tuple[int, ...]
    feature_names: Tuple[str, ...]

    @property
    def id_name(self) -> str:
        return "item_id" if self.is_items else "user_id"


def table_columns(reader, is_items: bool) -> TableColumns:
    """TableColumns of an open readers.TableReader."""
    return TableColumns(
        is_items=is_items,
        id_col=reader.column(schema.ITEM_ID if is_items else schema.USER_ID),
        title_col=reader.column(schema.TITLE) if is_items else -1,
        feature_cols=tuple(reader.column(n) for n in reader.feature_columns),
        feature_names=tuple(reader.feature_columns))


@dataclasses.dataclass(frozen=True)
class TableCandidate:
    """A row with a well-formed id; whether it is kept depends on earlier rows of the id."""

    row_id: str
    path: str
    line: int
    title: Optional[str]           # items: cleaned title ("" = empty); users: None
    values: Tuple[str, ...]        # cleaned categorical values, in feature_cols order
    title_problem: Optional[str] = None  # items: a control character in the raw title


def classify_table_row(rec: Record, path: str, cols: TableColumns
                       ) -> Tuple[Optional[Rejection], Optional[Tuple[str, str]],
                                  Optional[TableCandidate]]:
    """(rejection, (rejected id, why) or None, candidate): exactly one of rejection/candidate.

    The (id, why) pair names the row of a rejected id, quoted when an interaction refers to it.
    """
    if rec.error is not None:
        why = None
        if rec.fields and len(rec.fields) > cols.id_col and rec.fields[cols.id_col]:
            why = (rec.fields[cols.id_col], f"{path}:{rec.line} ({rec.error.value})")
        return Rejection(rec.error, path, rec.line, rec.message), why, None
    fields = rec.fields
    row_id = fields[cols.id_col]
    if not schema.is_valid_id(row_id):
        return Rejection(Reason.EMPTY_ID, path, rec.line,
                         f"{cols.id_name} {row_id!r}: ids must be non-empty, without surrounding "
                         f"spaces or control characters"), None, None
    clean = schema.clean_text
    title = clean(fields[cols.title_col]).strip() if cols.is_items else None
    values = tuple(clean(fields[c]).strip() for c in cols.feature_cols)
    problem = (schema.control_character_problem(schema.TITLE, fields[cols.title_col])
               if cols.is_items else None)
    return None, None, TableCandidate(row_id, path, rec.line, title, values, problem)


def resolve_candidate(cand: TableCandidate, kept_at: Optional[Tuple[str, int]],
                      is_items: bool) -> Tuple[Optional[Rejection], Optional[str]]:
    """Keeps or rejects a candidate given where its id was first kept (None: not yet).

    Returns:
      (None, None) when kept; else (rejection, why-or-None), why being the text quoted for a
      rejected id (bad titles only; a duplicate's id is kept elsewhere).
    """
    if kept_at is not None:
        duplicate = Reason.DUPLICATE_ITEM if is_items else Reason.DUPLICATE_USER
        name = "item_id" if is_items else "user_id"
        return Rejection(duplicate, cand.path, cand.line,
                         f"{name} {cand.row_id!r} is already defined at "
                         f"{kept_at[0]}:{kept_at[1]}; the first definition is kept"), None
    if is_items and cand.title_problem is not None:
        return (Rejection(Reason.CONTROL_CHARACTER, cand.path, cand.line,
                          f"item_id {cand.row_id!r}: {cand.title_problem}"),
                f"{cand.path}:{cand.line} (control character in the title)")
    if is_items and not cand.title:
        return (Rejection(Reason.EMPTY_TITLE, cand.path, cand.line,
                          f"item_id {cand.row_id!r} has an empty title; every item needs text "
                          f"to be retrieved by"),
                f"{cand.path}:{cand.line} (empty title)")
    return None, None


# ---------------------------------------------------------------------------------------------
# Interactions file.

@dataclasses.dataclass(frozen=True)
class InteractionColumns:
    query: int
    item: int
    label: int
    user: int                      # -1 when absent (as the others below)
    timestamp: int
    gain: int


def interaction_columns(reader) -> InteractionColumns:
    c = reader.column
    return InteractionColumns(c(schema.QUERY), c(schema.ITEM_ID), c(schema.LABEL),
                              c(schema.USER_ID), c(schema.TIMESTAMP), c(schema.GAIN))


def interaction_notes(reader, auto_users: bool) -> list:
    """The report notes of an interactions file, from its header."""
    notes = []
    known = set(schema.INTERACTIONS.required) | set(schema.INTERACTIONS.optional)
    ignored = [c for c in reader.header if c not in known]
    if ignored:
        notes.append(f"columns {ignored} are not part of the format and were ignored")
    if reader.column(schema.SESSION) >= 0:
        notes.append("the session column was validated as text and is not used by the "
                     "layout (history is per user)")
    if auto_users:
        notes.append("no users file: the user_id values of this file define the users "
                     "(no profile features)")
    return notes


@dataclasses.dataclass(frozen=True)
class ParsedInteraction:
    """One interaction row's cells, parsed; the checks that need the tables come later."""

    path: str
    line: int
    query: str                     # cleaned ("" when blank)
    item_id: str
    user_id: str                   # "" = anonymous or no user column
    label_cell: str
    kind: Optional[int]            # LabelKind, None = bad label
    timestamp_cell: Optional[str]  # None = no timestamp column
    timestamp: Optional[float]     # None = bad (or no column)
    gain_cell: str
    gain: Optional[float]          # None = bad gain


_DEFAULT_GAIN = {k: schema.default_gain(k) for k in LabelKind}


def parse_interaction(rec: Record, path: str, cols: InteractionColumns
                      ) -> Union[Rejection, ParsedInteraction]:
    """A reader error, a control character in the query, or the row's parsed cells."""
    if rec.error is not None:
        return Rejection(rec.error, path, rec.line, rec.message)
    f = rec.fields
    problem = schema.control_character_problem(schema.QUERY, f[cols.query])
    if problem is not None:
        return Rejection(Reason.CONTROL_CHARACTER, path, rec.line, problem)
    query = schema.clean_text(f[cols.query])
    cell = f[cols.label]
    kind = schema.LABEL_VALUES.get(cell)
    if kind is None:
        kind = schema.parse_label(cell)
    ts_cell = f[cols.timestamp] if cols.timestamp >= 0 else None
    ts = schema.parse_timestamp(ts_cell) if ts_cell is not None else None
    gain_cell = f[cols.gain] if cols.gain >= 0 else ""
    gain = None
    if kind is not None:
        gain = schema.parse_gain(gain_cell) if gain_cell else _DEFAULT_GAIN[kind]
    return ParsedInteraction(
        path=path, line=rec.line, query=query if query.strip() else "", item_id=f[cols.item],
        user_id=f[cols.user] if cols.user >= 0 else "", label_cell=cell,
        kind=None if kind is None else int(kind), timestamp_cell=ts_cell, timestamp=ts,
        gain_cell=gain_cell, gain=gain)


def reaches_user_check(p: ParsedInteraction, item_known: bool) -> bool:
    """True when the row passes every check before the user's: without a users file, the first
    such row of a valid user id defines that user (its row follows first appearances)."""
    return bool(p.query) and item_known and p.kind is not None


def interaction_rejection(p: ParsedInteraction, item_known: bool, item_why: Optional[str],
                          user_known: bool, user_why: Optional[str]) -> Optional[Rejection]:
    """The first failed check of a parsed row, in the report's order, or None (kept).

    Args:
      p: the parsed row.
      item_known: its item_id is a kept item; item_why: else why its item row was rejected.
      user_known: its user_id is empty or a known user (without a users file: any valid id);
        user_why: else why its user row was rejected.
    """
    if not p.query:
        return Rejection(Reason.EMPTY_QUERY, p.path, p.line, "the query is empty")
    if not item_known:
        return Rejection(Reason.UNKNOWN_ITEM, p.path, p.line,
                         f"item_id {p.item_id!r} is not in the items file"
                         + (f" (its row was rejected: {item_why})" if item_why else ""))
    if p.kind is None:
        return Rejection(Reason.BAD_LABEL, p.path, p.line,
                         f"label {p.label_cell!r}; use one of click, positive, negative")
    if p.user_id and not user_known:
        return Rejection(Reason.UNKNOWN_USER, p.path, p.line,
                         f"user_id {p.user_id!r} is not in the users file"
                         + (f" (its row was rejected: {user_why})" if user_why else "")
                         + ("; leave the cell empty for anonymous interactions"
                            if not user_why else ""))
    if p.timestamp_cell is not None and p.timestamp is None:
        return Rejection(Reason.BAD_TIMESTAMP, p.path, p.line,
                         f"timestamp {p.timestamp_cell!r}; use seconds since 1970 or "
                         f"ISO 8601 (2011-08-11 04:00:17)")
    if p.gain is None:
        return Rejection(Reason.BAD_GAIN, p.path, p.line,
                         f"gain {p.gain_cell!r}; use a number >= 0 (or leave it empty)")
    return None


def record_rejection(report: schema.FileReport, rej: Rejection) -> None:
    """Counts a rejection in a report; its example names the file the row came from."""
    report.reject(rej.reason, rej.line, rej.message, path=rej.path)
