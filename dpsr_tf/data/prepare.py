"""`dpsr prepare`: validate the three input files and write the training layout.

Every row is either kept or rejected with one reason (schema.Reason) and counted; the report
shows a few file:line examples per reason. A missing file, a malformed header or a missing
required column stops with SchemaError; so does a file whose rejected fraction exceeds
`max_reject_fraction` (probably the wrong file or delimiter) or an empty result.

Item titles and queries are tokenized once here, through the pybind11 side of the C++
tokenizer, with the same TokenizerConfig; the layout (dpsr_tf/data/layout.py) stores tables
once and interactions as 24-byte records that refer to them by row.
"""
import array
import dataclasses
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data.derived_tables import human_negative_table, tokenize_texts, user_histories
from dpsr_tf.data.layout_writer import (check_fractions, check_output, save_array as _save,
                                        write_metadata, write_records)
from dpsr_tf.data.readers import ShardedReader
from dpsr_tf.tokenization import Tokenizer, TokenizerConfig, build_vocabulary



PrepareError = schema.PrepareError


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Inputs and settings of `prepare` (the flags of `dpsr prepare`).

    Attributes:
      items, interactions: paths of the items and interactions files (.tsv/.csv[.gz]).
      output: the layout directory to write (replaced if it holds a previous layout).
      users: path of the users file, or None (user ids of the interactions then define the
        users, without profile features).
      tokenizer: tokenizer settings for item titles and queries.
      build_vocab: build a vocabulary (vocabulary mode) from titles + train queries.
      vocab_min_count: keep features seen at least this often (build_vocab).
      split: the train/eval split.
      history_length: keep at most this many recent items per example in "user_history".
      eval_min_gain: default relevance threshold of eval_set.load_eval_set.
      max_reject_fraction: stop when a file rejects more than this fraction of its rows.
      max_examples: examples per rejection reason in the report.
      records_per_shard: interaction records per file.
      seed: seed of the train records' order on disk (a global shuffle once).
      progress_every_s: progress lines on stderr at most this often.
      pseudo_queries: how many pseudo-queries to make per item from its title and attributes
        (dpsr_tf/data/pseudo_queries.py); they form the "pseudo" record split, training only.
      validation_fraction: the share of the training queries (seeded by `seed`) whose
        interactions form the "validation" split instead of training (data/validation_split.py):
        early stopping and the automatic choices read it, never the eval split. 0 = none (they
        then fall back to the eval split, with a warning).
      min_validation_queries: a smaller validation split takes this many queries while it stays
        within a quarter of the training queries (split.validation_size).
    """

    items: str
    interactions: str
    output: str
    users: Optional[str] = None
    tokenizer: TokenizerConfig = TokenizerConfig()
    build_vocab: bool = False
    vocab_min_count: int = 2
    split: split_lib.SplitConfig = split_lib.SplitConfig()
    history_length: int = 16
    eval_min_gain: float = 0.0
    max_reject_fraction: float = 0.5
    max_examples: int = 5
    records_per_shard: int = 1 << 22
    seed: int = 0
    progress_every_s: float = 5.0
    pseudo_queries: pseudo_lib.PseudoQueryConfig = pseudo_lib.PseudoQueryConfig()
    # Keep only this many distinct train queries (seeded by `seed`, split.sample_train_queries)
    # with all their interactions; the others' interactions are dropped; eval is untouched.
    # 0 = keep all. Measures small-log behaviour.
    max_train_queries: int = 0
    validation_fraction: float = 0.1
    min_validation_queries: int = split_lib.MIN_VALIDATION_QUERIES

    def __post_init__(self):
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {self.history_length}")
        if not np.isfinite(self.eval_min_gain):
            raise ValueError(f"eval_min_gain must be a finite number, got {self.eval_min_gain}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"max_reject_fraction must be in [0, 1], got "
                             f"{self.max_reject_fraction}")
        if self.records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {self.records_per_shard}")
        if self.max_train_queries < 0:
            raise ValueError(f"max_train_queries must be >= 0 (0 = keep every training "
                             f"query), got {self.max_train_queries}")
        split_lib.validation_size(0, self.validation_fraction, self.min_validation_queries)


# ---------------------------------------------------------------------------------------------
# Reading and validating.

class _Categorical:
    """A categorical column read row by row: values interned to provisional ids (memory stays
    at 4 bytes per row however many rows repeat a value)."""

    def __init__(self):
        self.codes = array.array("i")
        self.ids: Dict[str, int] = {"": 0}
        self.values: List[str] = [""]

    def append(self, value: str) -> None:
        code = self.ids.get(value)
        if code is None:
            code = self.ids[value] = len(self.values)
            self.values.append(value)
        self.codes.append(code)

    def encode(self) -> Tuple[np.ndarray, List[str]]:
        """(ids [N] int32, vocab): ids by descending count, then value; "" -> 0."""
        codes = np.frombuffer(self.codes, np.int32) if len(self.codes) else np.zeros(0, np.int32)
        counts = np.bincount(codes, minlength=len(self.values))
        order = sorted(range(1, len(self.values)), key=lambda c: (-counts[c], self.values[c]))
        order = [c for c in order if counts[c] > 0]
        remap = np.zeros(len(self.values), np.int32)
        remap[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        return remap[codes], [self.values[c] for c in order]


@dataclasses.dataclass
class _Table:
    """Kept rows of the items or users file."""

    ids: List[str]
    index: Dict[str, int]
    feature_names: List[str]
    values: List["_Categorical"]     # per feature column
    titles: Optional[List[str]] = None
    rejected: Dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why


def _read_table(path: str, file_schema: schema.FileSchema, report: schema.FileReport,
                progress_every_s: float) -> _Table:
    reader = ShardedReader(path, file_schema, progress_every_s)
    is_items = file_schema is schema.ITEMS
    cols = rows_lib.table_columns(reader, is_items)
    table = _Table([], {}, list(reader.feature_columns), [_Categorical() for _ in cols.feature_cols],
                   [] if is_items else None)
    kept_at = []                   # row -> (path, line) of its definition
    for _, file_path, rec in reader:
        report.rows_read += 1
        rejection, why, cand = rows_lib.classify_table_row(rec, file_path, cols)
        if rejection is None:
            row = table.index.get(cand.row_id)
            rejection, why_text = rows_lib.resolve_candidate(
                cand, None if row is None else kept_at[row], is_items)
            why = (cand.row_id, why_text) if why_text else None
        if why is not None:
            table.rejected.setdefault(*why)
        if rejection is not None:
            rows_lib.record_rejection(report, rejection)
            continue
        if is_items:
            table.titles.append(cand.title)
        table.index[cand.row_id] = len(table.ids)
        table.ids.append(cand.row_id)
        kept_at.append((file_path, cand.line))
        for values, value in zip(table.values, cand.values):
            values.append(value)
        report.rows_kept += 1
    return table


@dataclasses.dataclass
class _Interactions:
    queries: List[str]
    query_rows: np.ndarray     # [n] int32
    item_rows: np.ndarray      # [n] int32
    user_rows: np.ndarray      # [n] int32, -1 = none
    label_kinds: np.ndarray    # [n] int8
    gains: np.ndarray          # [n] float32
    timestamps: Optional[np.ndarray]   # [n] float64 or None (no timestamp column)


def _read_interactions(path: str, items: _Table, users: Optional[_Table],
                       report: schema.FileReport, progress_every_s: float
                       ) -> Tuple[_Interactions, Optional[_Table]]:
    reader = ShardedReader(path, schema.INTERACTIONS, progress_every_s)
    cols = rows_lib.interaction_columns(reader)
    auto_users = users is None and cols.user >= 0
    report.notes.extend(rows_lib.interaction_notes(reader, auto_users))
    if auto_users:
        users = _Table([], {}, [], [])
    user_index = users.index if users is not None else {}
    user_rejected = users.rejected if users is not None else {}
    item_index = items.index
    query_index: Dict[str, int] = {}
    queries: List[str] = []
    q_rows, i_rows, u_rows = array.array("i"), array.array("i"), array.array("i")
    kinds, gains, times = array.array("b"), array.array("f"), array.array("d")
    has_time = cols.timestamp >= 0
    for _, file_path, rec in reader:
        report.rows_read += 1
        parsed = rows_lib.parse_interaction(rec, file_path, cols)
        if isinstance(parsed, rows_lib.Rejection):
            rows_lib.record_rejection(report, parsed)
            continue
        item_row = item_index.get(parsed.item_id, -1)
        user_row = user_index.get(parsed.user_id, -1) if parsed.user_id else -1
        if (auto_users and user_row < 0 and parsed.user_id
                and rows_lib.reaches_user_check(parsed, item_row >= 0)
                and schema.is_valid_id(parsed.user_id)):
            user_row = user_index[parsed.user_id] = len(users.ids)
            users.ids.append(parsed.user_id)
        rejection = rows_lib.interaction_rejection(
            parsed, item_row >= 0, items.rejected.get(parsed.item_id),
            user_row >= 0, user_rejected.get(parsed.user_id))
        if rejection is not None:
            rows_lib.record_rejection(report, rejection)
            continue
        q_row = query_index.get(parsed.query)
        if q_row is None:
            q_row = query_index[parsed.query] = len(queries)
            queries.append(parsed.query)
        q_rows.append(q_row)
        i_rows.append(item_row)
        u_rows.append(user_row)
        kinds.append(parsed.kind)
        gains.append(parsed.gain)
        if has_time:
            times.append(parsed.timestamp)
        report.rows_kept += 1

    def np_of(arr, dtype):
        return np.frombuffer(arr, dtype=dtype).copy() if len(arr) else np.zeros([0], dtype)

    result = _Interactions(
        queries=queries,
        query_rows=np_of(q_rows, np.int32),
        item_rows=np_of(i_rows, np.int32),
        user_rows=np_of(u_rows, np.int32),
        label_kinds=np_of(kinds, np.int8),
        gains=np_of(gains, np.float32),
        timestamps=np_of(times, np.float64) if has_time else None,
    )
    return result, users


# ---------------------------------------------------------------------------------------------
# Derived tables.

def _feature_matrix(table: _Table) -> Tuple[np.ndarray, Dict[str, List[str]]]:
    n = len(table.ids)
    matrix = np.zeros([n, len(table.feature_names)], np.int32)
    vocabs = {}
    for j, (name, column) in enumerate(zip(table.feature_names, table.values)):
        matrix[:, j], vocabs[name] = column.encode()
    return matrix, vocabs


def _item_attributes(items: "_Table") -> List[List[str]]:
    """[num_items] lists of the categorical values of each item (for pseudo-queries)."""
    columns = [(col.values, col.codes) for col in items.values]
    return [[values[codes[i]] for values, codes in columns] for i in range(len(items.ids))]


def prepare(config: PrepareConfig, log: Callable[[str], None] = print) -> layout_lib.LayoutSpec:
    """Validates the three files and writes the training layout to config.output.

    Returns:
      The LayoutSpec of the written layout.

    Raises:
      SchemaError: a file is missing or its header is malformed / lacks a required column.
      PrepareError: too many rejected rows, no items or interactions left, bad output dir.
    """
    start = time.monotonic()
    output = os.path.abspath(config.output)
    check_output(output)
    reports = []
    item_report = schema.FileReport(config.items, "items", config.max_examples)
    reports.append(item_report)
    items = _read_table(config.items, schema.ITEMS, item_report, config.progress_every_s)
    users = None
    user_report = None
    if config.users:
        user_report = schema.FileReport(config.users, "users", config.max_examples)
        reports.append(user_report)
        users = _read_table(config.users, schema.USERS, user_report, config.progress_every_s)
    inter_report = schema.FileReport(config.interactions, "interactions", config.max_examples)
    reports.append(inter_report)
    if config.split.method == split_lib.TIME:
        header_probe = ShardedReader(config.interactions, schema.INTERACTIONS)
        has_time = header_probe.column(schema.TIMESTAMP) >= 0
        header_probe.close()
        if not has_time:
            raise schema.SchemaError(
                f"{config.interactions}:1: --split=time needs a timestamp column in the "
                f"interactions file; use --split=query_hash")
    inter, users = _read_interactions(config.interactions, items, users, inter_report,
                                      config.progress_every_s)
    for rep in reports:
        log(rep.format())
    if not items.ids:
        raise PrepareError(f"{config.items}: no valid item rows")
    if len(inter.query_rows) == 0:
        raise PrepareError(f"{config.interactions}: no valid interaction rows")
    check_fractions(reports, config.max_reject_fraction)
    num_users = len(users.ids) if users is not None else 0

    # Split.
    n = len(inter.query_rows)
    split_info = {"method": config.split.method}
    if config.split.method == split_lib.QUERY_HASH:
        eval_query = split_lib.eval_queries_mask(inter.queries, config.split.modulus,
                                                 config.split.fold)
        is_eval = eval_query[inter.query_rows]
        split_info["modulus"] = config.split.modulus
        split_info["fold"] = config.split.fold
        split_info["rule"] = config.split.rule()
    else:
        cutoff = config.split.time_cutoff
        if cutoff is None:
            cutoff = split_lib.time_cutoff(inter.timestamps, config.split.eval_fraction)
        is_eval = inter.timestamps >= cutoff
        split_info["time_cutoff"] = cutoff
        split_info["rule"] = f"eval iff timestamp >= {cutoff}"
    if config.max_train_queries:
        # A small log cut from this one: the other train queries' interactions never happened
        # (they leave the records, the vocabulary and the user histories); eval is untouched.
        train_rows = inter.query_rows[~is_eval]
        kept = split_lib.sample_train_queries(inter.queries, train_rows,
                                              config.max_train_queries, config.seed)
        keep = is_eval | np.isin(inter.query_rows, kept)
        split_info["max_train_queries"] = {
            "requested": config.max_train_queries, "seed": config.seed,
            "train_queries_before": int(len(np.unique(train_rows))),
            "train_queries_kept": int(len(kept)),
            "train_interactions_dropped": int((~keep).sum())}
        note = (f"--max_train_queries={config.max_train_queries} (seed {config.seed}): kept "
                f"{len(kept):,} of {split_info['max_train_queries']['train_queries_before']:,} "
                f"train queries; dropped the {int((~keep).sum()):,} train interactions of the "
                f"others; eval untouched")
        inter_report.notes.append(note)
        log(note)
        inter = dataclasses.replace(
            inter, query_rows=inter.query_rows[keep], item_rows=inter.item_rows[keep],
            user_rows=inter.user_rows[keep], label_kinds=inter.label_kinds[keep],
            gains=inter.gains[keep],
            timestamps=None if inter.timestamps is None else inter.timestamps[keep])
        is_eval = is_eval[keep]
        n = len(inter.query_rows)

    # History.
    order_key = (inter.timestamps if inter.timestamps is not None
                 else np.arange(n, dtype=np.float64))
    history_items, history_splits, history_end = user_histories(
        inter.user_rows, inter.item_rows, inter.label_kinds, order_key, num_users)

    with layout_lib.building(output) as tmp:
        _write_layout(config, tmp, items, users, inter, is_eval, split_info,
                      history_items, history_splits, history_end, reports, log)
    log(f"wrote {output} in {time.monotonic() - start:.1f} s")
    return layout_lib.load_layout_spec(output)


def _write_layout(config, tmp, items, users, inter, is_eval, split_info,
                  history_items, history_splits, history_end, reports, log):
    # Tokenizer (vocabulary mode: the vocabulary file lives in the layout).
    tok_config = config.tokenizer
    if config.build_vocab:
        # Not the validation queries the layout writer carves next (the same seeded choice over
        # the same train records): what early stopping and the choices are made on must not have
        # shaped the features the model sees.
        train_records = ~is_eval & (inter.label_kinds != schema.LabelKind.NEGATIVE)
        held_out = split_lib.validation_queries(
            inter.queries, inter.query_rows[train_records], config.validation_fraction,
            config.seed, config.min_validation_queries)
        train_queries = sorted(set(inter.query_rows[~is_eval].tolist()) - set(held_out.tolist()))
        texts = items.titles + [inter.queries[q] for q in train_queries]
        tok_config = build_vocabulary(texts, dataclasses.replace(tok_config, vocab_file=None),
                                      os.path.join(tmp, layout_lib.VOCAB_TXT),
                                      min_count=config.vocab_min_count)
        log(f"built a vocabulary of {len(open(tok_config.vocab_file, encoding='utf-8').readlines()) - 1:,} "
            f"features (min count {config.vocab_min_count})")
    elif tok_config.vocab_file:
        shutil.copyfile(tok_config.vocab_file, os.path.join(tmp, layout_lib.VOCAB_TXT))
        tok_config = dataclasses.replace(tok_config,
                                         vocab_file=os.path.join(tmp, layout_lib.VOCAB_TXT))
    tokenizer = Tokenizer(tok_config)

    def path(rel):
        return os.path.join(tmp, rel)

    # Items.
    layout_lib.write_lines(path(layout_lib.ITEM_IDS), items.ids)
    layout_lib.write_lines(path(layout_lib.ITEM_TITLES), items.titles)
    ids, splits = tokenize_texts(tokenizer, items.titles, "item titles", config.progress_every_s)
    _save(path(layout_lib.ITEM_TOKEN_IDS), ids)
    _save(path(layout_lib.ITEM_TOKEN_SPLITS), splits)
    item_matrix, item_vocabs = _feature_matrix(items)
    _save(path(layout_lib.ITEM_FEATURES), item_matrix)
    for name, vocab in item_vocabs.items():
        layout_lib.write_lines(path(f"{layout_lib.ITEM_VOCAB_DIR}/{name}.txt"), vocab)
    item_token_count = len(ids)

    # Users.
    user_ids = users.ids if users is not None else []
    layout_lib.write_lines(path(layout_lib.USER_IDS), user_ids)
    if users is not None and users.feature_names:
        user_matrix, user_vocabs = _feature_matrix(users)
    else:
        user_matrix, user_vocabs = np.zeros([len(user_ids), 0], np.int32), {}
    _save(path(layout_lib.USER_FEATURES), user_matrix)
    for name, vocab in user_vocabs.items():
        layout_lib.write_lines(path(f"{layout_lib.USER_VOCAB_DIR}/{name}.txt"), vocab)
    os.makedirs(path(layout_lib.USER_VOCAB_DIR), exist_ok=True)
    _save(path(layout_lib.USER_HISTORY_ITEMS), history_items)
    _save(path(layout_lib.USER_HISTORY_SPLITS), history_splits)

    # Queries: the logged ones, then the pseudo-queries made from the catalog (rows after them).
    pseudo_texts, pseudo_items = pseudo_lib.generate(items.titles, _item_attributes(items),
                                                     config.pseudo_queries)
    if len(pseudo_texts):
        log(f"pseudo-queries: {len(pseudo_texts):,} from the catalog "
            f"({config.pseudo_queries.per_item} per item), e.g. {pseudo_texts[:3]}")
    all_queries = inter.queries + pseudo_texts
    layout_lib.write_lines(path(layout_lib.QUERY_TEXTS), all_queries)
    q_ids, q_splits = tokenize_texts(tokenizer, all_queries, "queries",
                                     config.progress_every_s)
    _save(path(layout_lib.QUERY_TOKEN_IDS), q_ids)
    _save(path(layout_lib.QUERY_TOKEN_SPLITS), q_splits)

    # Interaction records: train in a seeded random order (a global shuffle once), eval in file
    # order.
    n = len(inter.query_rows)
    records = np.empty([n], layout_lib.RECORD_DTYPE)
    records["query_row"] = inter.query_rows
    records["item_row"] = inter.item_rows
    records["user_row"] = inter.user_rows
    records["history_end"] = history_end
    records["label_kind"] = inter.label_kinds
    records["gain"] = inter.gains
    # Human negatives of train queries go to a per-query table (joined to every example of
    # their query, §4.5), not into the train stream where they would take batch slots.
    train_negative = ~is_eval & (inter.label_kinds == schema.LabelKind.NEGATIVE)
    neg_items, neg_splits = human_negative_table(
        inter.query_rows[train_negative], inter.item_rows[train_negative], len(all_queries))
    _save(path(layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS), neg_items)
    _save(path(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS), neg_splits)
    train_idx = np.nonzero(~is_eval & ~train_negative)[0]
    train_idx = train_idx[np.random.default_rng(config.seed).permutation(len(train_idx))]
    eval_idx = np.nonzero(is_eval)[0]
    pseudo = np.zeros([len(pseudo_texts)], layout_lib.RECORD_DTYPE)
    pseudo["query_row"] = np.arange(len(inter.queries), len(all_queries), dtype=np.int32)
    pseudo["item_row"] = pseudo_items
    pseudo["user_row"] = -1
    pseudo["label_kind"] = schema.LabelKind.CLICK
    pseudo["gain"] = 1.0
    pseudo = pseudo[np.random.default_rng(config.seed + 1).permutation(len(pseudo))]
    record_files, num_records, record_checks = {}, {}, {}
    for split, part in (("train", records[train_idx]), ("eval", records[eval_idx]),
                        ("pseudo", pseudo)):
        if split == "pseudo" and not len(part):
            continue
        record_files[split] = write_records(tmp, split, part, config.records_per_shard,
                                             record_checks)
        num_records[split] = int(len(part))

    labels = np.bincount(inter.label_kinds, minlength=3)
    # Not a leak (a pseudo-query is built from the catalog alone), but worth knowing when an
    # eval query is called "unseen": how many eval queries some title span spells exactly.
    pseudo_lower = {t.lower() for t in pseudo_texts}
    eval_texts = {inter.queries[q] for q in np.unique(inter.query_rows[eval_idx]).tolist()}
    counts = {
        "labels": {schema.LABEL_NAMES[k]: int(labels[k]) for k in schema.LabelKind},
        "splits": {
            split: {"interactions": int(len(idx)),
                    "queries": int(len(np.unique(inter.query_rows[idx])))}
            for split, idx in (("train", train_idx), ("eval", eval_idx))},
        "item_tokens": int(item_token_count),
        "pseudo_queries": len(pseudo_texts),
        "eval_queries_equal_to_a_pseudo_query": sum(
            1 for t in eval_texts if t.lower() in pseudo_lower),
        "train_human_negatives": {"pairs": int(train_negative.sum()),
                                  "queries": int((np.diff(neg_splits) > 0).sum())},
        "interactions_with_user": int((inter.user_rows >= 0).sum()),
        "users_with_history": int((np.diff(history_splits) > 0).sum()),
    }
    sizes = {"num_items": len(items.ids), "num_users": len(user_ids),
             "num_queries": len(all_queries), "num_logged_queries": len(inter.queries)}
    item_features = {name: len(item_vocabs[name]) + 1 for name in items.feature_names}
    user_features = {name: len(user_vocabs[name]) + 1 for name in user_vocabs}
    return write_metadata(config, tmp, tok_config, tokenizer.id_space, reports, sizes,
                          item_features, user_features, counts, split_info, record_files,
                          num_records, record_checks, log)
