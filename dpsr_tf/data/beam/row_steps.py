"""The per-element steps of the Beam prepare pipeline (prepare_pipeline.py wires them).

Each step makes the single process's decision on one element or one key's group, through the
same functions (dpsr_tf/data/rows.py per row and id, derived_tables per user and per query, the
C++ tokenizer per text), so the pipeline's tables equal prepare.prepare's.
"""
import dataclasses
import hashlib
from typing import Optional, Sequence

import numpy as np

import apache_beam as beam
from apache_beam.metrics import Metrics

from dpsr_tf.data import derived_tables
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import ranks
from dpsr_tf.data.readers import TableReader
from dpsr_tf.data.schema import LabelKind
from dpsr_tf.tokenization import Tokenizer

# Bucket sizes of AssignRows: positions are file << 32 | line, so 2**16 lines per bucket;
# pseudo-queries are item_row << 16 | j, so 256 items per bucket; hashes are 52 bits.
POSITION_SHIFT = 16
PSEUDO_SHIFT = 24
HASH_SHIFT = 40
PSEUDO_J_BITS = 16


def _position(file_index: int, line: int) -> int:
    return (file_index << 32) | line


def seeded_hash(seed: int, key: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 12        # 52 bits


# ---------------------------------------------------------------------------------------------
# Reading.

class _ReadFile(beam.DoFn):
    """(file index, path) -> (position, path, Record) for every record of the file."""

    def __init__(self, file_schema: schema.FileSchema, progress_every_s: float):
        super().__init__()
        self._schema = file_schema
        self._every = progress_every_s
        self._rows = Metrics.counter("dpsr_prepare", f"{file_schema.kind}_rows_read")

    def process(self, element):
        index, path = element
        for rec in TableReader(path, self._schema, self._every):
            self._rows.inc()
            yield _position(index, rec.line), path, rec


def read_files(p, label: str, files: Sequence[str], file_schema, progress_every_s: float):
    return (p
            | f"{label}Files" >> beam.Create(list(enumerate(files)))
            | f"{label}Spread" >> beam.Reshuffle()
            | f"{label}Read" >> beam.ParDo(_ReadFile(file_schema, progress_every_s))
            | f"{label}Rebalance" >> beam.Reshuffle())


# ---------------------------------------------------------------------------------------------
# Items and users tables.

def _classify(element, cols: rows_lib.TableColumns):
    pos, path, rec = element
    rejection, why, cand = rows_lib.classify_table_row(rec, path, cols)
    yield beam.pvalue.TaggedOutput("events", ("read",))
    if why is not None:
        yield beam.pvalue.TaggedOutput("why", (why[0], (pos, why[1])))
    if rejection is not None:
        yield beam.pvalue.TaggedOutput("events", _reject_event(pos, rejection))
    else:
        yield beam.pvalue.TaggedOutput("candidates", (cand.row_id, (pos, cand)))


def _reject_event(pos: int, rejection: rows_lib.Rejection):
    return ("reject", pos, rejection.reason.value,
            f"{rejection.path}:{rejection.line}: {rejection.message}")


def _resolve_id(element, is_items: bool):
    """All rows of one id, in file order, through rows.resolve_candidate."""
    _, pos_cands = element
    kept_at = None
    for pos, cand in sorted(pos_cands, key=lambda pc: pc[0]):
        rejection, why = rows_lib.resolve_candidate(cand, kept_at, is_items)
        if why is not None:
            yield beam.pvalue.TaggedOutput("why", (cand.row_id, (pos, why)))
        if rejection is not None:
            yield beam.pvalue.TaggedOutput("events", _reject_event(pos, rejection))
            continue
        kept_at = (cand.path, cand.line)
        yield beam.pvalue.TaggedOutput("events", ("kept",))
        yield beam.pvalue.TaggedOutput("kept", (pos, cand))


def _first_why(pairs):
    return min(pairs)


def vocabularies(p_values, label: str):
    """(column index, value) counts -> {column index: [values by count desc, then value]}."""
    def order(column_counts):
        column, value_counts = column_counts
        ordered = sorted(value_counts, key=lambda vc: (-vc[1], vc[0]))
        return column, [v for v, _ in ordered]

    return (p_values
            | f"{label}Count" >> beam.combiners.Count.PerElement()
            | f"{label}ByColumn" >> beam.Map(lambda cv_n: (cv_n[0][0], (cv_n[0][1], cv_n[1])))
            | f"{label}Group" >> beam.GroupByKey()
            | f"{label}Order" >> beam.Map(order))


class FeatureIds(beam.DoFn):
    """(row, candidate) -> (row, int32 [F] categorical ids), vocabularies as a side input."""

    def process(self, row_cand, vocabs):
        row, cand = row_cand
        lookup = self._lookup(vocabs)
        yield row, np.array([lookup[j].get(v, 0) if v else 0 for j, v in enumerate(cand.values)],
                            np.int32)

    def _lookup(self, vocabs):
        if getattr(self, "_cache_key", None) is not id(vocabs):
            self._cache = {j: {v: i + 1 for i, v in enumerate(values)}
                           for j, values in vocabs.items()}
            self._cache_key = id(vocabs)
        return self._cache


def table_rows(p_rows, label: str, cols: rows_lib.TableColumns, files, progress_every_s,
           file_schema):
    """Items or users: (report events, kept (row, candidate), why (id, text))."""
    read = read_files(p_rows, label, files, file_schema, progress_every_s)
    classified = read | f"{label}Classify" >> beam.FlatMap(_classify, cols).with_outputs(
        "events", "why", "candidates")
    resolved = (classified.candidates
                | f"{label}GroupById" >> beam.GroupByKey()
                | f"{label}Resolve" >> beam.FlatMap(_resolve_id, cols.is_items).with_outputs(
                    "events", "why", "kept"))
    events = ((classified.events, resolved.events) | f"{label}Events" >> beam.Flatten())
    whys = ((classified.why, resolved.why)
            | f"{label}Whys" >> beam.Flatten()
            | f"{label}FirstWhy" >> beam.CombinePerKey(_first_why)
            | f"{label}WhyText" >> beam.Map(lambda kv: (kv[0], kv[1][1])))
    kept = resolved.kept | f"{label}Rows" >> ranks.AssignRows(POSITION_SHIFT)
    return events, kept, whys


# ---------------------------------------------------------------------------------------------
# Tokenization.

class Tokenize(beam.DoFn):
    """(row, text) -> (row, int32 token ids); one C++ tokenizer per worker (DoFn.setup)."""

    def __init__(self, tok_config):
        super().__init__()
        self._config = tok_config
        self._tokenizer = None

    def setup(self):
        self._tokenizer = Tokenizer(self._config)

    def process(self, element):
        row, text = element
        ids, _ = self._tokenizer.tokenize([text])
        yield row, ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Interactions.

def parse_interactions(element, cols: rows_lib.InteractionColumns):
    pos, path, rec = element
    yield beam.pvalue.TaggedOutput("events", ("read",))
    parsed = rows_lib.parse_interaction(rec, path, cols)
    if isinstance(parsed, rows_lib.Rejection):
        yield beam.pvalue.TaggedOutput("events", _reject_event(pos, parsed))
    else:
        yield beam.pvalue.TaggedOutput("parsed", (parsed.item_id, (pos, parsed)))


def _table_row(groups):
    """(row, why) of a joined id's table side: its kept row (-1 if none) and, when its
    definition was rejected, why (None otherwise)."""
    rows = list(groups["row"])
    whys = list(groups["why"])
    return (rows[0] if rows else -1), (whys[0] if whys else None)


def join_items(element):
    """item_id group -> (pos, parsed, item_row, item_why) per interaction."""
    _, groups = element
    item_row, why = _table_row(groups)
    for pos, parsed in groups["parsed"]:
        yield pos, parsed, item_row, why


def user_key(element):
    return element[1].user_id, element


def join_users(element):
    """user_id group -> (pos, parsed, item_row, item_why, user_row, user_why)."""
    _, groups = element
    user_row, why = _table_row(groups)
    for pos, parsed, item_row, item_why in groups["parsed"]:
        yield pos, parsed, item_row, item_why, user_row, why


def verdict(element):
    pos, parsed, item_row, item_why, user_row, user_why = element
    known_user = not parsed.user_id or user_row >= 0
    rejection = rows_lib.interaction_rejection(parsed, item_row >= 0, item_why, known_user,
                                               user_why)
    if rejection is not None:
        yield beam.pvalue.TaggedOutput("events", _reject_event(pos, rejection))
        return
    yield beam.pvalue.TaggedOutput("events", ("kept",))
    user = user_row if parsed.user_id else -1
    yield beam.pvalue.TaggedOutput("kept", (parsed.query, (pos, parsed.timestamp, item_row, user,
                                                           parsed.kind, parsed.gain)))


def auto_user_candidate(element):
    """Without a users file: the rows that define a user (the first reaches its row)."""
    pos, parsed, item_row, _ = element
    if (parsed.user_id and rows_lib.reaches_user_check(parsed, item_row >= 0)
            and schema.is_valid_id(parsed.user_id)):
        yield parsed.user_id, pos


@dataclasses.dataclass(frozen=True)
class SplitRule:
    method: str
    modulus: int
    fold: int
    cutoff: Optional[float]

    def is_eval(self, query: str, timestamp: Optional[float]) -> bool:
        if self.method == split_lib.QUERY_HASH:
            return split_lib.is_eval_query(query, self.modulus, self.fold)
        return timestamp >= self.cutoff


def join_queries(element, rule: SplitRule):
    """query group -> interactions with their query row and split, plus per-query counts."""
    query, groups = element
    rows = list(groups["row"])
    q_row = rows[0]
    in_train = in_eval = False
    for pos, ts, item_row, user_row, kind, gain in groups["kept"]:
        is_eval = rule.is_eval(query, ts)
        negative = kind == LabelKind.NEGATIVE
        if is_eval:
            split = "eval"
            in_eval = True
        elif negative:
            split = "negative"
        else:
            split = "train"
            in_train = True
        yield beam.pvalue.TaggedOutput("interactions", (
            pos, ts, q_row, item_row, user_row, kind, gain, split))
    if in_train:
        yield beam.pvalue.TaggedOutput("counts", ("train_queries", 1))
    if in_eval:
        yield beam.pvalue.TaggedOutput("counts", ("eval_queries", 1))
        yield beam.pvalue.TaggedOutput("eval_lower", (query.lower(), "eval"))


def record_bytes(q_row, item_row, user_row, history_end, kind, gain) -> bytes:
    rec = np.zeros([1], layout_lib.RECORD_DTYPE)
    rec["query_row"], rec["item_row"], rec["user_row"] = q_row, item_row, user_row
    rec["history_end"], rec["label_kind"], rec["gain"] = history_end, kind, gain
    return rec.tobytes()


def per_user(element, has_time: bool):
    """One user's interactions -> its history row and every interaction's record.

    The history is prepare.user_histories on this user's rows alone (num_users = 1).
    """
    user_row, items = element
    items = sorted(items, key=lambda it: it[0])
    n = len(items)
    item_rows = np.array([it[3] for it in items], np.int32)
    kinds = np.array([it[5] for it in items], np.int8)
    order_key = np.array([it[1] if has_time else float(it[0]) for it in items], np.float64)
    history, _, history_end = derived_tables.user_histories(
        np.zeros([n], np.int32), item_rows, kinds, order_key, 1)
    if len(history):
        yield beam.pvalue.TaggedOutput("history", (user_row, history.astype(np.int32)))
    for it, end in zip(items, history_end.tolist()):
        yield _split_record(it, int(end))


def _split_record(it, history_end: int):
    pos, _, q_row, item_row, user_row, kind, gain, split = it
    return split, pos, q_row, item_row, record_bytes(q_row, item_row, user_row, history_end, kind,
                                                gain)


def no_user_record(it):
    return _split_record(it, 0)


def negatives(element):
    q_row, item_rows = element
    items, _ = derived_tables.human_negative_table(
        np.zeros([len(item_rows)], np.int64), np.asarray(list(item_rows), np.int64), 1)
    return q_row, items
