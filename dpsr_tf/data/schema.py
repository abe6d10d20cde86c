"""The three-file input format: columns, labels, rejection reasons and the rejection report.

docs/data_format.md is the user-facing description; this module is its executable form.

  items file         item_id, title, [brand, category, shop, any other categorical column]
  users file         user_id, [profile columns: gender, purchase_power, age_bucket, ...]   optional
  interactions file  query, item_id, label, [user_id, timestamp, session, gain]
"""
import collections
import dataclasses
import datetime
import enum
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple


class SchemaError(ValueError):
    """A file cannot be read at all (missing file, malformed header, missing required column).

    `dpsr prepare` stops with a non-zero exit status and prints the message.
    """


class PrepareError(SchemaError):
    """prepare cannot produce a usable layout (too many rejected rows, nothing left, ...)."""


# ---------------------------------------------------------------------------------------------
# Columns.

ITEM_ID, TITLE = "item_id", "title"
USER_ID = "user_id"
QUERY, LABEL, TIMESTAMP, SESSION, GAIN = "query", "label", "timestamp", "session", "gain"


@dataclasses.dataclass(frozen=True)
class FileSchema:
    """Which columns a file must have and which it understands.

    Attributes:
      kind: "items", "users" or "interactions".
      required: columns that must be in the header.
      optional: columns with a meaning of their own.
      extra_columns_are_features: True for items/users: any other column is a categorical
        feature; False for interactions: other columns are reported and ignored.
    """

    kind: str
    required: Tuple[str, ...]
    optional: Tuple[str, ...]
    extra_columns_are_features: bool


ITEMS = FileSchema("items", (ITEM_ID, TITLE), (), True)
USERS = FileSchema("users", (USER_ID,), (), True)
INTERACTIONS = FileSchema("interactions", (QUERY, ITEM_ID, LABEL),
                          (USER_ID, TIMESTAMP, SESSION, GAIN), False)

# A categorical column name becomes a feature key "item_<name>" / "user_<name>", so it must be
# a plain identifier.
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def check_feature_name(name: str, where: str) -> None:
    if not name or not set(name) <= _NAME_CHARS or name[0].isdigit():
        raise SchemaError(
            f"{where}: column name {name!r} cannot be a feature name; use lower-case letters, "
            f"digits and '_' (starting with a letter), e.g. {_suggest_name(name)!r}")


def _suggest_name(name: str) -> str:
    out = "".join(c if c in _NAME_CHARS else "_" for c in name.strip().lower()).strip("_")
    return out if out and not out[0].isdigit() else "col_" + out


# ---------------------------------------------------------------------------------------------
# Labels.

class LabelKind(enum.IntEnum):
    """Stored in the interaction records; `label` feature = 1.0 for CLICK and POSITIVE."""

    CLICK = 0       # implicit positive from a log
    POSITIVE = 1    # human-judged positive
    NEGATIVE = 2    # human-judged negative (DPSR §4.5)


LABEL_VALUES: Dict[str, LabelKind] = {
    "click": LabelKind.CLICK,
    "positive": LabelKind.POSITIVE,
    "human_positive": LabelKind.POSITIVE,
    "negative": LabelKind.NEGATIVE,
    "human_negative": LabelKind.NEGATIVE,
}
LABEL_NAMES = {LabelKind.CLICK: "click", LabelKind.POSITIVE: "positive",
               LabelKind.NEGATIVE: "negative"}


def parse_label(value: str) -> Optional[LabelKind]:
    """LabelKind of a label cell (case-insensitive), or None when it is not a label."""
    return LABEL_VALUES.get(value.strip().lower())


def default_gain(kind: LabelKind) -> float:
    return 0.0 if kind == LabelKind.NEGATIVE else 1.0


def parse_gain(value: str) -> Optional[float]:
    """A finite gain >= 0, or None."""
    try:
        gain = float(value)
    except ValueError:
        return None
    return gain if math.isfinite(gain) and gain >= 0 else None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def parse_timestamp(value: str) -> Optional[float]:
    """Seconds since the epoch from a number or an ISO-8601 date/time (naive = UTC); or None."""
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return (when - _EPOCH).total_seconds()


# ---------------------------------------------------------------------------------------------
# Rejections.

class Reason(enum.Enum):
    """Why a row was rejected. The value is the text printed in the report."""

    BAD_UTF8 = "bad UTF-8"
    FIELD_COUNT = "wrong number of fields"
    BAD_QUOTING = "malformed quoting"
    LINE_TOO_LONG = "line too long"
    BLANK_LINE = "blank line"
    EMPTY_ID = "empty or malformed id"
    EMPTY_TITLE = "empty title"
    DUPLICATE_ITEM = "duplicate item id"
    DUPLICATE_USER = "duplicate user id"
    EMPTY_QUERY = "empty query"
    UNKNOWN_ITEM = "unknown item"
    UNKNOWN_USER = "unknown user"
    BAD_LABEL = "bad label"
    BAD_TIMESTAMP = "bad timestamp"
    BAD_GAIN = "bad gain"
    CONTROL_CHARACTER = "control character in text"


class FileReport:
    """Counts and a few examples of rejected rows of one file.

    Every row read is either kept or rejected with exactly one Reason.
    """

    def __init__(self, path: str, kind: str, max_examples: int = 5):
        self.path = path
        self.kind = kind
        self.max_examples = max_examples
        self.rows_read = 0
        self.rows_kept = 0
        self.rejected: Dict[Reason, int] = collections.Counter()
        self.examples: Dict[Reason, List[str]] = collections.defaultdict(list)
        self.notes: List[str] = []

    def reject(self, reason: Reason, line: int, message: str, path: str = "") -> None:
        """Counts a rejected row; `path` names its file when the input is several (a glob)."""
        self.rejected[reason] += 1
        examples = self.examples[reason]
        if len(examples) < self.max_examples:
            examples.append(f"{path or self.path}:{line}: {message}")

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_rejected": self.rows_rejected,
            "rejected": {r.value: n for r, n in sorted(self.rejected.items(),
                                                       key=lambda rn: -rn[1])},
            "examples": {r.value: list(self.examples[r]) for r in self.rejected},
            "notes": list(self.notes),
        }

    def format(self) -> str:
        lines = [f"{self.kind} {self.path}: {self.rows_read:,} rows read, "
                 f"{self.rows_kept:,} kept, {self.rows_rejected:,} rejected"]
        for note in self.notes:
            lines.append(f"  note: {note}")
        for reason, count in sorted(self.rejected.items(), key=lambda rn: -rn[1]):
            lines.append(f"  rejected {count:,} x {reason.value}, e.g.")
            lines += [f"    {example}" for example in self.examples[reason]]
        return "\n".join(lines)


def check_header(header: Sequence[str], schema: FileSchema, path: str) -> List[str]:
    """Validates a header row; returns the feature columns (items/users) in file order.

    Raises:
      SchemaError: empty or duplicate column names, a missing required column, or a feature
        column that is not a valid feature name.
    """
    where = f"{path}:1"
    names = list(header)
    if not names or all(not n for n in names):
        raise SchemaError(f"{where}: empty header; the first line must name the columns, "
                          f"e.g. {'<TAB>'.join(schema.required)}")
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise SchemaError(f"{where}: malformed header: column(s) {empty} have no name "
                          f"(header {names!r}); is the delimiter right? (.csv = comma, "
                          f".tsv/.txt = tab)")
    dupes = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if dupes:
        raise SchemaError(f"{where}: malformed header: duplicate column(s) {dupes}")
    missing = [c for c in schema.required if c not in names]
    if missing:
        hint = ""
        if len(names) == 1 and ("," in names[0] or "\t" in names[0]):
            hint = " (the whole header is one column: wrong delimiter? .csv = comma, .tsv = tab)"
        raise SchemaError(
            f"{where}: the {schema.kind} file is missing required column(s) {missing}; "
            f"header has {names!r}{hint}. The {schema.kind} file needs "
            f"{', '.join(schema.required)} (docs/data_format.md).")
    known = set(schema.required) | set(schema.optional)
    extra = [n for n in names if n not in known]
    if schema.extra_columns_are_features:
        for name in extra:
            check_feature_name(name, where)
        return extra
    return []


def is_valid_id(value: str) -> bool:
    """Ids are non-empty, have no surrounding whitespace and no control characters."""
    return bool(value) and value == value.strip() and value.isprintable()


# C0 control characters and DEL, except tab and line breaks (clean_text makes those spaces):
# a NUL or a form feed inside a title or query would break the layout's one-per-line files and
# the tokenizer's input, and is never meant as text.
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def control_character_problem(column: str, value: str) -> Optional[str]:
    """None when a text cell has no control character, else the rejection message: the column,
    the value escaped (truncated), the character and its position, and what to do."""
    found = _CONTROL_CHARACTERS.search(value)
    if found is None:
        return None
    shown = ascii(value[:80]) + ("..." if len(value) > 80 else "")
    return (f"the {column} {shown} has the control character U+{ord(found.group()):04X} at "
            f"character {found.start() + 1}; remove control characters from the text (a binary "
            f"or wrongly decoded export?)")


def clean_text(value: str) -> str:
    """Tabs and line breaks inside a text cell become spaces (the layout stores one per line)."""
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\r\n", " ").replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return value
