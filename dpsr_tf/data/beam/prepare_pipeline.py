"""`dpsr prepare` as an Apache Beam pipeline: the single-process layout, from many workers.

The pipeline makes the same decisions as dpsr_tf/data/prepare.py with the same functions
(dpsr_tf/data/rows.py per row and per id, pseudo_queries.item_pseudo_queries per item,
prepare.user_histories per user, prepare.human_negative_table per query, split.is_eval_query
per query, the C++ tokenizer per text), and numbers rows the same way (first appearance in
file order, ranks.AssignRows), so the tables and every example are those of the single
process. Only the order of train and pseudo records on disk differs: the single process
shuffles them with numpy's permutation of `seed`, here they are ordered by a seeded hash of
their position (a shuffle that needs no global view). Eval records keep file order.

Stages (each a keyed step, so no worker holds more than one key's rows or one block):
  read      each input file is read by one worker (readers.TableReader: gz, quoting, line
            errors exactly as in one process); a glob of shards spreads the reading
  items     per-row checks -> group by item_id (duplicates, empty titles) -> rows by file
            order -> tokens (C++ tokenizer in a DoFn), categorical ids, pseudo-queries
  users     the same from the users file, or the first appearances of user_id values
  joins     interactions x items by item_id, x users by user_id -> the per-row verdict
  queries   rows by first appearance; split per query; tokens
  users     per user: the positives in time order and each interaction's history_end
  queries   per train query: its human negatives
  write     blocks of 65,536 table rows or records under the output (parts/); the launcher
            streams them into the layout's files (record files of --records_per_shard)

Not supported here (they need a global view the single process has for free): --build_vocab
(use the vocabulary of a first single-process run, or --vocab_file), --max_train_queries, and
--split=time without --split_time.
"""
import dataclasses
import hashlib
import os
import shutil
import time
import zlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import derived_tables, layout_writer
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import blocks
from dpsr_tf.data.beam import ranks
from dpsr_tf.data.beam import report as report_lib
from dpsr_tf.data.readers import ShardedReader, TableReader
from dpsr_tf.data.schema import LabelKind
from dpsr_tf.tokenization import Tokenizer

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")

# Bucket sizes of AssignRows: positions are file << 32 | line, so 2**16 lines per bucket;
# pseudo-queries are item_row << 16 | j, so 256 items per bucket; hashes are 52 bits.
_POSITION_SHIFT = 16
_PSEUDO_SHIFT = 24
_HASH_SHIFT = 40
_PSEUDO_J_BITS = 16


def _position(file_index: int, line: int) -> int:
    return (file_index << 32) | line


def _seeded_hash(seed: int, key: int) -> int:
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


def _read(p, label: str, files: Sequence[str], file_schema, progress_every_s: float):
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


def _vocabularies(p_values, label: str):
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


class _FeatureIds(beam.DoFn):
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


def _table(p_rows, label: str, cols: rows_lib.TableColumns, files, progress_every_s,
           file_schema):
    """Items or users: (report events, kept (row, candidate), why (id, text))."""
    read = _read(p_rows, label, files, file_schema, progress_every_s)
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
    kept = resolved.kept | f"{label}Rows" >> ranks.AssignRows(_POSITION_SHIFT)
    return events, kept, whys


# ---------------------------------------------------------------------------------------------
# Tokenization.

class _Tokenize(beam.DoFn):
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

def _parse(element, cols: rows_lib.InteractionColumns):
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


def _join_items(element):
    """item_id group -> (pos, parsed, item_row, item_why) per interaction."""
    _, groups = element
    item_row, why = _table_row(groups)
    for pos, parsed in groups["parsed"]:
        yield pos, parsed, item_row, why


def _user_key(element):
    return element[1].user_id, element


def _join_users(element):
    """user_id group -> (pos, parsed, item_row, item_why, user_row, user_why)."""
    _, groups = element
    user_row, why = _table_row(groups)
    for pos, parsed, item_row, item_why in groups["parsed"]:
        yield pos, parsed, item_row, item_why, user_row, why


def _verdict(element):
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


def _auto_user_candidate(element):
    """Without a users file: the rows that define a user (the first reaches its row)."""
    pos, parsed, item_row, _ = element
    if (parsed.user_id and rows_lib.reaches_user_check(parsed, item_row >= 0)
            and schema.is_valid_id(parsed.user_id)):
        yield parsed.user_id, pos


@dataclasses.dataclass(frozen=True)
class _SplitRule:
    method: str
    modulus: int
    fold: int
    cutoff: Optional[float]

    def is_eval(self, query: str, timestamp: Optional[float]) -> bool:
        if self.method == split_lib.QUERY_HASH:
            return split_lib.is_eval_query(query, self.modulus, self.fold)
        return timestamp >= self.cutoff


def _join_queries(element, rule: _SplitRule):
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


def _record(q_row, item_row, user_row, history_end, kind, gain) -> bytes:
    rec = np.zeros([1], layout_lib.RECORD_DTYPE)
    rec["query_row"], rec["item_row"], rec["user_row"] = q_row, item_row, user_row
    rec["history_end"], rec["label_kind"], rec["gain"] = history_end, kind, gain
    return rec.tobytes()


def _per_user(element, has_time: bool):
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
    return split, pos, q_row, item_row, _record(q_row, item_row, user_row, history_end, kind,
                                                gain)


def _no_user_record(it):
    return _split_record(it, 0)


def _negatives(element):
    q_row, item_rows = element
    items, _ = derived_tables.human_negative_table(
        np.zeros([len(item_rows)], np.int64), np.asarray(list(item_rows), np.int64), 1)
    return q_row, items


# ---------------------------------------------------------------------------------------------
# Writing.

def _records_to_blocks(records, split: str, parts: str):
    """(sort key, record bytes) -> blocks of records in row order (row = rank of the key); the
    launcher cuts them into --records_per_shard files (_write_record_files)."""
    ranked = records | f"{split}RecordRank" >> ranks.AssignRows(
        _HASH_SHIFT if split != "eval" else _POSITION_SHIFT)
    return _to_blocks(ranked, f"records_{split}", parts)


def _to_blocks(pcoll, table: str, parts_dir: str):
    return (pcoll
            | f"{table}Key" >> beam.Map(blocks.block_key(table))
            | f"{table}Block" >> beam.GroupByKey()
            | f"{table}WriteBlock" >> beam.Map(blocks.write_block(parts_dir)))


def _single(pcoll, table: str, parts_dir: str):
    """A one-value PCollection as the table's row 0."""
    return _to_blocks(pcoll | f"{table}Row0" >> beam.Map(lambda v: (0, v)), table, parts_dir)


# ---------------------------------------------------------------------------------------------
# The pipeline.

def _check_supported(config: prepare_lib.PrepareConfig) -> None:
    if config.build_vocab:
        raise prepare_lib.PrepareError(
            "--build_vocab is not supported with a Beam runner (the vocabulary needs every "
            "title and train query in one place); build it once with --runner=InProcess, or "
            "pass --vocab_file")
    if config.max_train_queries:
        raise prepare_lib.PrepareError(
            "--max_train_queries is not supported with a Beam runner; use --runner=InProcess")
    if config.split.method == split_lib.TIME and config.split.time_cutoff is None:
        raise prepare_lib.PrepareError(
            "--split=time with a Beam runner needs --split_time (the cutoff of "
            "--eval_fraction needs every timestamp in one place)")
    if config.pseudo_queries.per_item >= 1 << _PSEUDO_J_BITS:
        raise prepare_lib.PrepareError(f"--pseudo_queries_per_item must be below "
                                       f"{1 << _PSEUDO_J_BITS} with a Beam runner")


def _pseudo_of_item(row_cand, num_items: int, config: pseudo_lib.PseudoQueryConfig):
    row, cand = row_cand
    per_item = min(config.per_item, max(1, config.max_total // max(1, num_items)))
    cfg = dataclasses.replace(config, per_item=per_item)
    for j, text in enumerate(pseudo_lib.item_pseudo_queries(cand.title, cand.values, row, cfg)):
        yield (row << _PSEUDO_J_BITS) | j, (text, row)


def prepare_beam(config: prepare_lib.PrepareConfig, runner: str,
                 beam_args: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> layout_lib.LayoutSpec:
    """Writes the layout of `prepare.prepare(config)` with an Apache Beam pipeline.

    Args:
      config: the prepare settings (see _check_supported for the few it refuses).
      runner: one of RUNNERS.
      beam_args: Beam pipeline options ("--direct_num_workers=2", "--project=...", ...).
      log: where the report and progress lines go.

    Returns:
      The LayoutSpec of the written layout.

    Raises:
      SchemaError, PrepareError: as prepare.prepare, and for unsupported settings.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: use one of {RUNNERS}")
    _check_supported(config)
    start = time.monotonic()
    output = os.path.abspath(config.output)
    layout_writer.check_output(output)
    # Headers are checked here, before any worker starts, with the single-process messages.
    item_reader = ShardedReader(config.items, schema.ITEMS)
    item_cols = rows_lib.table_columns(item_reader, True)
    item_reader.close()
    user_reader = user_cols = None
    if config.users:
        user_reader = ShardedReader(config.users, schema.USERS)
        user_cols = rows_lib.table_columns(user_reader, False)
        user_reader.close()
    inter_reader = ShardedReader(config.interactions, schema.INTERACTIONS)
    inter_cols = rows_lib.interaction_columns(inter_reader)
    inter_reader.close()
    has_time = inter_cols.timestamp >= 0
    if config.split.method == split_lib.TIME and not has_time:
        raise schema.SchemaError(
            f"{config.interactions}:1: --split=time needs a timestamp column in the "
            f"interactions file; use --split=query_hash")
    auto_users = user_reader is None and inter_cols.user >= 0
    inter_notes = rows_lib.interaction_notes(inter_reader, auto_users)

    tmp = output + f".tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    parts = os.path.join(tmp, blocks.PARTS_DIR)
    try:
        tok_config = config.tokenizer
        if tok_config.vocab_file:
            shutil.copyfile(tok_config.vocab_file, os.path.join(tmp, layout_lib.VOCAB_TXT))
            tok_config = dataclasses.replace(
                tok_config, vocab_file=os.path.join(tmp, layout_lib.VOCAB_TXT))
        rule = _SplitRule(config.split.method, config.split.modulus, config.split.fold,
                          config.split.time_cutoff)
        options = PipelineOptions(list(beam_args) + [f"--runner={runner}"])
        log(f"beam: running the prepare pipeline on {runner} "
            f"({' '.join(beam_args) or 'default options'})")
        pipeline_start = time.monotonic()
        p = beam.Pipeline(options=options)
        _build(p, config, tok_config, rule, item_reader.files, item_cols,
               user_reader.files if user_reader else None, user_cols,
               inter_reader.files, inter_cols, auto_users, has_time, parts)
        result = p.run()
        result.wait_until_finish()
        log(f"beam: pipeline done in {time.monotonic() - pipeline_start:.1f} s "
            f"({_rows_read(result)}); joining the table blocks")
        _assemble(config, tmp, parts, tok_config, rule, item_cols, user_cols, inter_notes,
                  auto_users, log)
        shutil.rmtree(parts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    layout_lib.publish(tmp, output)
    log(f"wrote {output} in {time.monotonic() - start:.1f} s")
    return layout_lib.load_layout_spec(output)


def _rows_read(result) -> str:
    """'rows read: items N, ...' from the readers' counters (where the runner reports them)."""
    try:
        counters = result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace("dpsr_prepare"))["counters"]
    except Exception:  # pylint: disable=broad-except  # a runner without metrics
        return "no metrics from this runner"
    read = {c.key.metric.name: c.committed for c in counters}
    return "rows read: " + ", ".join(
        f"{kind} {read.get(f'{kind}_rows_read', 0):,}" for kind in ("items", "users",
                                                                    "interactions"))


def _build(p, config, tok_config, rule, item_files, item_cols, user_files, user_cols,
           inter_files, inter_cols, auto_users, has_time, parts):
    every = config.progress_every_s
    counts = []

    # Items.
    item_events, items, item_whys = _table(p, "Items", item_cols, item_files, every,
                                           schema.ITEMS)
    num_items = items | "NumItems" >> beam.combiners.Count.Globally()
    _to_blocks(items | "ItemIds" >> beam.Map(lambda rc: (rc[0], rc[1].row_id)), "item_ids",
               parts)
    _to_blocks(items | "ItemTitles" >> beam.Map(lambda rc: (rc[0], rc[1].title)),
               "item_titles", parts)
    item_tokens = (items | "ItemText" >> beam.Map(lambda rc: (rc[0], rc[1].title))
                   | "ItemTokenize" >> beam.ParDo(_Tokenize(tok_config)))
    _to_blocks(item_tokens, "item_tokens", parts)
    counts.append(item_tokens | "ItemTokenCount" >> beam.Map(lambda rt: ("item_tokens",
                                                                         len(rt[1]))))
    item_vocabs = _vocabularies(
        items | "ItemValues" >> beam.FlatMap(
            lambda rc: [(j, v) for j, v in enumerate(rc[1].values) if v]), "ItemVocab")
    _single(item_vocabs | "ItemVocabList" >> beam.combiners.ToList(), "item_vocabs", parts)
    _to_blocks(items | "ItemFeatures" >> beam.ParDo(
        _FeatureIds(), beam.pvalue.AsDict(item_vocabs)), "item_features", parts)
    item_rows_by_id = items | "ItemRowById" >> beam.Map(lambda rc: (rc[1].row_id, rc[0]))

    # Pseudo-queries: rows after the logged queries, in (item row, j) order.
    pseudo = (items
              | "PseudoQueries" >> beam.FlatMap(_pseudo_of_item,
                                                beam.pvalue.AsSingleton(num_items),
                                                config.pseudo_queries)
              | "PseudoRows" >> ranks.AssignRows(_PSEUDO_SHIFT))

    # Users.
    if user_files is not None:
        user_events, users, user_whys = _table(p, "Users", user_cols, user_files, every,
                                               schema.USERS)
        _to_blocks(users | "UserIds" >> beam.Map(lambda rc: (rc[0], rc[1].row_id)),
                   "user_ids", parts)
        user_vocabs = _vocabularies(
            users | "UserValues" >> beam.FlatMap(
                lambda rc: [(j, v) for j, v in enumerate(rc[1].values) if v]), "UserVocab")
        _single(user_vocabs | "UserVocabList" >> beam.combiners.ToList(), "user_vocabs",
                parts)
        _to_blocks(users | "UserFeatures" >> beam.ParDo(
            _FeatureIds(), beam.pvalue.AsDict(user_vocabs)), "user_features", parts)
        user_rows_by_id = users | "UserRowById" >> beam.Map(lambda rc: (rc[1].row_id, rc[0]))
        _single(users | "NumUsers" >> beam.combiners.Count.Globally(), "num_users", parts)
        _single(user_events | "UserReport" >> beam.CombineGlobally(
            report_lib.ReportFn(config.max_examples)), "report_users", parts)

    # Interactions: parse, join items.
    inter_read = _read(p, "Inter", inter_files, schema.INTERACTIONS, every)
    parsed = inter_read | "InterParse" >> beam.FlatMap(_parse, inter_cols).with_outputs(
        "events", "parsed")
    with_items = ({"parsed": parsed.parsed, "row": item_rows_by_id, "why": item_whys}
                  | "JoinItems" >> beam.CoGroupByKey()
                  | "WithItem" >> beam.FlatMap(_join_items))

    # Users: from the users file, or defined by their first reaching row.
    if auto_users:
        auto = (with_items
                | "AutoUserRows" >> beam.FlatMap(_auto_user_candidate)
                | "AutoUserFirst" >> beam.CombinePerKey(min)
                | "AutoUserKey" >> beam.Map(lambda up: (up[1], up[0]))
                | "AutoUserRank" >> ranks.AssignRows(_POSITION_SHIFT))
        _to_blocks(auto, "user_ids", parts)
        _single(auto | "NumUsers" >> beam.combiners.Count.Globally(), "num_users", parts)
        user_rows_by_id = auto | "AutoUserById" >> beam.Map(lambda ru: (ru[1], ru[0]))
        user_whys = p | "NoUserWhys" >> beam.Create([])
    if user_files is not None or auto_users:
        # Anonymous rows go around the join (they would all meet under the key "").
        keyed = (with_items
                 | "NamedUser" >> beam.Filter(lambda e: bool(e[1].user_id))
                 | "ByUser" >> beam.Map(_user_key))
        anonymous = (with_items
                     | "Anonymous" >> beam.Filter(lambda e: not e[1].user_id)
                     | "AnonymousRow" >> beam.Map(lambda e: e + (-1, None)))
        joined = (({"parsed": keyed, "row": user_rows_by_id, "why": user_whys}
                   | "JoinUsers" >> beam.CoGroupByKey()
                   | "WithUser" >> beam.FlatMap(_join_users), anonymous)
                  | "AllUsers" >> beam.Flatten())
    else:
        joined = with_items | "NoUsers" >> beam.Map(lambda e: e + (-1, None))
    verdict = joined | "Verdict" >> beam.FlatMap(_verdict).with_outputs("events", "kept")
    inter_events = (parsed.events, verdict.events) | "InterEvents" >> beam.Flatten()

    # Queries: rows by first appearance among kept rows; split per query.
    query_rows = (verdict.kept
                  | "QueryFirst" >> beam.Map(lambda qk: (qk[0], qk[1][0]))
                  | "QueryMin" >> beam.CombinePerKey(min)
                  | "QueryKey" >> beam.Map(lambda qp: (qp[1], qp[0]))
                  | "QueryRank" >> ranks.AssignRows(_POSITION_SHIFT))
    num_logged = query_rows | "NumLogged" >> beam.combiners.Count.Globally()
    per_query = ({"kept": verdict.kept,
                  "row": query_rows | "QueryById" >> beam.Map(lambda rq: (rq[1], rq[0]))}
                 | "JoinQueries" >> beam.CoGroupByKey()
                 | "PerQuery" >> beam.FlatMap(_join_queries, rule).with_outputs(
                     "interactions", "counts", "eval_lower"))
    counts.append(per_query.counts)
    query_texts = ((query_rows,
                    pseudo | "PseudoQueryRow" >> beam.Map(
                        lambda prt, n: (n + prt[0], prt[1][0]),
                        n=beam.pvalue.AsSingleton(num_logged)))
                   | "AllQueries" >> beam.Flatten())
    _to_blocks(query_texts, "query_texts", parts)
    _to_blocks(query_texts | "QueryTokenize" >> beam.ParDo(_Tokenize(tok_config)),
               "query_tokens", parts)
    _single(num_logged, "num_logged_queries", parts)
    _single(pseudo | "NumPseudo" >> beam.combiners.Count.Globally(), "num_pseudo", parts)
    # Eval queries that a pseudo-query spells (lower-cased), as the single process counts.
    pseudo_lower = (pseudo
                    | "PseudoLower" >> beam.Map(lambda prt: (prt[1][0].lower(), "pseudo"))
                    | "PseudoLowerOnce" >> beam.Distinct())
    counts.append(((per_query.eval_lower, pseudo_lower)
                   | "Lowers" >> beam.Flatten()
                   | "LowerGroup" >> beam.GroupByKey()
                   | "EvalEqualPseudo" >> beam.FlatMap(
                       lambda kv: ([("eval_equal_pseudo", sum(1 for v in kv[1] if v == "eval"))]
                                   if "pseudo" in kv[1] else []))))

    interactions = per_query.interactions
    counts.append(interactions | "LabelCounts" >> beam.Map(lambda it: (f"label_{it[5]}", 1)))
    counts.append(interactions | "SplitCounts" >> beam.Map(lambda it: (f"split_{it[7]}", 1)))
    counts.append(interactions | "WithUserCounts" >> beam.FlatMap(
        lambda it: [("with_user", 1)] if it[4] >= 0 else []))

    # Per user: history and history_end; interactions without a user have none.
    with_user = (interactions
                 | "HasUser" >> beam.Filter(lambda it: it[4] >= 0)
                 | "ByUserRow" >> beam.Map(lambda it: (it[4], it))
                 | "GroupUser" >> beam.GroupByKey()
                 | "PerUser" >> beam.FlatMap(_per_user, has_time).with_outputs(
                     "history", main="records"))
    _to_blocks(with_user.history, "user_history", parts)
    counts.append(with_user.history | "UsersWithHistory" >> beam.Map(
        lambda _: ("users_with_history", 1)))
    no_user = (interactions
               | "NoUser" >> beam.Filter(lambda it: it[4] < 0)
               | "NoUserRecord" >> beam.Map(_no_user_record))
    records = (with_user.records, no_user) | "Records" >> beam.Flatten()

    # Human negatives of train queries: a per-query table.
    negatives = (records
                 | "TrainNegatives" >> beam.Filter(lambda r: r[0] == "negative")
                 | "NegByQuery" >> beam.Map(lambda r: (r[2], r[3]))
                 | "NegGroup" >> beam.GroupByKey()
                 | "NegTable" >> beam.Map(_negatives))
    _to_blocks(negatives, "human_negatives", parts)
    counts.append(negatives | "NegQueries" >> beam.Map(lambda _: ("negative_queries", 1)))

    seed = config.seed
    for split in ("train", "eval"):
        key = ((lambda r: (r[1], r[4])) if split == "eval"
               else (lambda r, s=seed: (_seeded_hash(s, r[1]), r[4])))
        part = (records
                | f"{split}Filter" >> beam.Filter(lambda r, s=split: r[0] == s)
                | f"{split}Key" >> beam.Map(key))
        _records_to_blocks(part, split, parts)
    pseudo_records = pseudo | "PseudoRecord" >> beam.Map(
        lambda prt, n, s=seed + 1: (_seeded_hash(s, prt[0]),
                                    _record(n + prt[0], prt[1][1], -1, 0, LabelKind.CLICK, 1.0)),
        n=beam.pvalue.AsSingleton(num_logged))
    _records_to_blocks(pseudo_records, "pseudo", parts)

    # Reports and counts.
    _single(item_events | "ItemReport" >> beam.CombineGlobally(
        report_lib.ReportFn(config.max_examples)), "report_items", parts)
    _single(inter_events | "InterReport" >> beam.CombineGlobally(
        report_lib.ReportFn(config.max_examples)), "report_interactions", parts)
    _single(tuple(counts) | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsDict" >> beam.combiners.ToDict(), "counts", parts)
    _single(num_items, "num_items", parts)


def _write_record_files(parts: str, out_dir: str, split: str, total: int, per_shard: int,
                        checks: Dict[str, dict]) -> List[str]:
    """Streams a split's record blocks into files of per_shard records (the single process's
    shard sizes and names); `checks` gets each file's records, bytes and CRC-32."""
    shards = max(1, -(-total // per_shard))
    rels = []
    rows = blocks.iter_rows(parts, f"records_{split}")
    expected = 0
    for shard in range(shards):
        count = min(per_shard, total - shard * per_shard)
        rel = f"{layout_lib.INTERACTIONS_DIR}/{split}-{shard:05d}-of-{shards:05d}.rec"
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        header = layout_lib.record_header(count)
        crc, size = zlib.crc32(header), len(header)
        with open(path, "wb") as f:
            f.write(header)
            for _ in range(count):
                row, body = next(rows)
                if row != expected:
                    raise RuntimeError(f"{split} records: row {expected} missing (found {row})")
                expected += 1
                f.write(body)
                crc = zlib.crc32(body, crc)
                size += len(body)
        checks[rel] = {"records": count, "bytes": size, "crc32": f"{crc:08x}"}
        rels.append(rel)
    if next(rows, None) is not None:
        raise RuntimeError(f"{split} records: more than the {total} counted")
    return rels


def _assemble(config, tmp, parts, tok_config, rule, item_cols, user_cols, inter_notes,
              auto_users, log):
    """Joins the blocks into the layout files and writes layout.json (the launcher's part)."""
    read = blocks.read_single
    reports = []
    for kind, path in (("items", config.items), ("users", config.users),
                       ("interactions", config.interactions)):
        if path is None:
            continue
        rep = schema.FileReport(path, kind, config.max_examples)
        report_lib.fill_report(rep, read(parts, f"report_{kind}"))
        if kind == "interactions":
            rep.notes.extend(inter_notes)
        reports.append(rep)
    for rep in reports:
        log(rep.format())
    num_items = read(parts, "num_items", 0)
    counts = read(parts, "counts", {})
    if not num_items:
        raise prepare_lib.PrepareError(f"{config.items}: no valid item rows")
    kept = sum(v for k, v in counts.items() if k.startswith("label_"))
    if not kept:
        raise prepare_lib.PrepareError(f"{config.interactions}: no valid interaction rows")
    layout_writer.check_fractions(reports, config.max_reject_fraction)
    num_users = read(parts, "num_users", 0)
    num_logged = read(parts, "num_logged_queries", 0)
    num_pseudo = read(parts, "num_pseudo", 0)
    num_queries = num_logged + num_pseudo
    if num_pseudo:
        log(f"pseudo-queries: {num_pseudo:,} from the catalog")

    def path(rel):
        return os.path.join(tmp, rel)

    blocks.write_lines(parts, "item_ids", path(layout_lib.ITEM_IDS), num_items)
    blocks.write_lines(parts, "item_titles", path(layout_lib.ITEM_TITLES), num_items)
    item_token_count = blocks.write_ragged(parts, "item_tokens", path(layout_lib.ITEM_TOKEN_IDS),
                                           path(layout_lib.ITEM_TOKEN_SPLITS), num_items, True)
    blocks.write_matrix(parts, "item_features", path(layout_lib.ITEM_FEATURES), num_items,
                        len(item_cols.feature_names))
    item_vocabs = dict(read(parts, "item_vocabs", []))
    os.makedirs(path(layout_lib.ITEM_VOCAB_DIR), exist_ok=True)
    for j, name in enumerate(item_cols.feature_names):
        layout_lib.write_lines(path(f"{layout_lib.ITEM_VOCAB_DIR}/{name}.txt"),
                               item_vocabs.get(j, []))
    blocks.write_lines(parts, "user_ids", path(layout_lib.USER_IDS), num_users)
    user_names = list(user_cols.feature_names) if user_cols is not None else []
    blocks.write_matrix(parts, "user_features", path(layout_lib.USER_FEATURES), num_users,
                        len(user_names))
    user_vocabs = dict(read(parts, "user_vocabs", []))
    os.makedirs(path(layout_lib.USER_VOCAB_DIR), exist_ok=True)
    for j, name in enumerate(user_names):
        layout_lib.write_lines(path(f"{layout_lib.USER_VOCAB_DIR}/{name}.txt"),
                               user_vocabs.get(j, []))
    blocks.write_ragged(parts, "user_history", path(layout_lib.USER_HISTORY_ITEMS),
                        path(layout_lib.USER_HISTORY_SPLITS), num_users, False)
    blocks.write_lines(parts, "query_texts", path(layout_lib.QUERY_TEXTS), num_queries)
    blocks.write_ragged(parts, "query_tokens", path(layout_lib.QUERY_TOKEN_IDS),
                        path(layout_lib.QUERY_TOKEN_SPLITS), num_queries, True)
    blocks.write_ragged(parts, "human_negatives", path(layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS),
                        path(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS), num_queries, False)

    record_files, num_records, record_checks = {}, {}, {}
    split_sizes = {"train": int(counts.get("split_train", 0)),
                   "eval": int(counts.get("split_eval", 0)), "pseudo": int(num_pseudo)}
    for split, total in split_sizes.items():
        if split == "pseudo" and not total:
            continue
        record_files[split] = _write_record_files(parts, tmp, split, total,
                                                  config.records_per_shard, record_checks)
        num_records[split] = total

    split_info = {"method": config.split.method}
    if config.split.method == split_lib.QUERY_HASH:
        split_info["modulus"] = config.split.modulus
        split_info["fold"] = config.split.fold
        split_info["rule"] = config.split.rule()
    else:
        split_info["time_cutoff"] = config.split.time_cutoff
        split_info["rule"] = f"eval iff timestamp >= {config.split.time_cutoff}"
    tokenizer = Tokenizer(tok_config)
    out_counts = {
        "labels": {schema.LABEL_NAMES[k]: int(counts.get(f"label_{int(k)}", 0))
                   for k in schema.LabelKind},
        "splits": {
            "train": {"interactions": int(counts.get("split_train", 0)),
                      "queries": int(counts.get("train_queries", 0))},
            "eval": {"interactions": int(counts.get("split_eval", 0)),
                     "queries": int(counts.get("eval_queries", 0))}},
        "item_tokens": int(item_token_count),
        "pseudo_queries": int(num_pseudo),
        "eval_queries_equal_to_a_pseudo_query": int(counts.get("eval_equal_pseudo", 0)),
        "train_human_negatives": {"pairs": int(counts.get("split_negative", 0)),
                                  "queries": int(counts.get("negative_queries", 0))},
        "interactions_with_user": int(counts.get("with_user", 0)),
        "users_with_history": int(counts.get("users_with_history", 0)),
    }
    sizes = {"num_items": num_items, "num_users": num_users, "num_queries": num_queries,
             "num_logged_queries": num_logged}
    item_features = {name: len(item_vocabs.get(j, [])) + 1
                     for j, name in enumerate(item_cols.feature_names)}
    user_features = {name: len(user_vocabs.get(j, [])) + 1 for j, name in enumerate(user_names)}
    layout_writer.write_metadata(config, tmp, tok_config, tokenizer.id_space, reports, sizes,
                               item_features, user_features, out_counts, split_info,
                               record_files, num_records, record_checks, log)
