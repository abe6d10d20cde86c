"""Tasks that turn the interactions into records, user histories and negatives.

  read_interactions_file  one input file -> parsed rows by hash of item_id
  join_items              one item_id partition: item row (or why the item was rejected) ->
                          rows by hash of user_id (anonymous rows by position); without a users
                          file also the rows that define a user (`auto_cand`)
  verdict                 one user_id partition: rows.interaction_rejection -> kept rows by
                          hash of the query
  per_query               one query partition: query row, split, per-query counts, the human
                          negatives table -> rows with a user by user row; records of the rest
  pseudo_records          one item range's pseudo-queries -> their records
  per_user                one user-row partition: derived_tables.user_histories per user ->
                          the history table and the records of the user's interactions
  eval_equal_pseudo       one partition of lower-cased texts: eval queries a pseudo-query spells

Records go out as (sort key, bytes) by range (numbering.rank_records orders them): train and
pseudo by a seeded hash of their position (a shuffle with no global view), eval by position.
"""
import numpy as np

from dpsr_tf.data import derived_tables
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import meta as meta_lib
from dpsr_tf.data.beam import numbering
from dpsr_tf.data.beam.job import LINE_MASK, Job, position, record_bytes, seeded_hash
from dpsr_tf.data.beam.table_tasks import open_input, reject_event
from dpsr_tf.data.schema import LabelKind


def _parsed(job: Job, pos: int, fields) -> rows_lib.ParsedInteraction:
    return rows_lib.ParsedInteraction(job.path_of("inter", pos), pos & LINE_MASK, *fields)


def read_interactions_file(job: Job, ctx, index: int) -> dict:
    """Interactions file `index` -> `inter` (position, parsed cells) by hash of item_id."""
    reader = open_input(job, "inter", index)
    report = ctx.reports.create_accumulator()
    parsed_rows = files_lib.PartitionWriter(job.base, "inter", f"{index:05d}")
    for rec in reader:
        ctx.reports.add_input(report, ("read",))
        parsed = rows_lib.parse_interaction(rec, reader.path, job.inter_cols)
        pos = position(index, rec.line)
        if isinstance(parsed, rows_lib.Rejection):
            ctx.reports.add_input(report, reject_event(pos, parsed))
            continue
        parsed_rows.write(job.key_part(parsed.item_id), (pos, (
            parsed.query, parsed.item_id, parsed.user_id, parsed.label_cell, parsed.kind,
            parsed.timestamp_cell, parsed.timestamp, parsed.gain_cell, parsed.gain)))
    out = {"rep/inter": report}
    meta_lib.add_counts(out, "c/inter", parsed_rows.close())
    return out


def join_items(job: Job, part: str) -> dict:
    """One item_id partition: each row's item row (-1: unknown) and why its item was rejected."""
    item_rows = numbering.load_map(job, "items", part)
    item_whys = dict(files_lib.read_piece(job.base, "items_why_final", part, []))
    joined = files_lib.PartitionWriter(job.base, "joined", part)
    auto = files_lib.PartitionWriter(job.base, "auto_cand", part)
    for pos, fields in files_lib.read_partition(job.base, "inter", part):
        item_id, user_id = fields[1], fields[2]
        item_row = item_rows.get(item_id, -1)
        joined.write(job.key_part(user_id) if user_id else job.int_part(pos),
                     (pos, fields, item_row, item_whys.get(item_id)))
        if (job.auto_users and user_id and schema.is_valid_id(user_id)
                and rows_lib.reaches_user_check(_parsed(job, pos, fields), item_row >= 0)):
            auto.write(job.key_part(user_id), (user_id, pos))
    out = {}
    meta_lib.add_counts(out, "c/joined", joined.close())
    meta_lib.add_counts(out, "c/auto_cand", auto.close())
    return out


def verdict(job: Job, ctx, part: str) -> dict:
    """One user_id partition: keep or reject each row -> `kept` by hash of the query."""
    has_users = job.user_cols is not None or job.auto_users
    user_rows = numbering.load_map(job, "users", part) if has_users else {}
    user_whys = dict(files_lib.read_piece(job.base, "users_why_final", part, []))
    report = ctx.reports.create_accumulator()
    kept = files_lib.PartitionWriter(job.base, "kept", part)
    for pos, fields, item_row, item_why in files_lib.read_partition(job.base, "joined", part):
        parsed = _parsed(job, pos, fields)
        user_row = user_rows.get(parsed.user_id, -1) if parsed.user_id else -1
        rejection = rows_lib.interaction_rejection(
            parsed, item_row >= 0, item_why, not parsed.user_id or user_row >= 0,
            user_whys.get(parsed.user_id))
        if rejection is not None:
            ctx.reports.add_input(report, reject_event(pos, rejection))
            continue
        ctx.reports.add_input(report, ("kept",))
        kept.write(job.key_part(parsed.query), (parsed.query, pos, parsed.timestamp, item_row,
                                                user_row, parsed.kind, parsed.gain))
    out = {"rep/inter": report}
    meta_lib.add_counts(out, "c/kept", kept.close())
    return out


class _Records:
    """Record writers of one task: (sort key, bytes) into `records_<split>` by range."""

    def __init__(self, job: Job, task: str, splits=("train", "eval")):
        self._job = job
        self._writers = {s: files_lib.PartitionWriter(job.base, f"records_{s}", task)
                         for s in splits}

    def add(self, split: str, pos: int, rec: bytes) -> None:
        job = self._job
        if split == "eval":
            self._writers[split].write(job.pos_range(pos), (pos, rec))
        else:
            seed = job.seed + (1 if split == "pseudo" else 0)
            hashed = seeded_hash(seed, pos)
            self._writers[split].write(job.hash_range(hashed), ((hashed, pos), rec))

    def close(self, out: dict) -> None:
        for split, writer in self._writers.items():
            meta_lib.add_counts(out, f"c/records_{split}", writer.close())


def per_query(job: Job, part: str) -> dict:
    """One query partition: query rows, splits, counts, human negatives; records or user rows."""
    q_rows = numbering.load_map(job, "queries", part)
    records = _Records(job, f"q{part}")
    by_user = files_lib.PartitionWriter(job.base, "by_user", part)
    out, is_eval_of = {}, {}
    train_queries, eval_queries, negatives = set(), set(), {}
    for query, pos, ts, item_row, user_row, kind, gain in files_lib.read_partition(
            job.base, "kept", part):
        q_row = q_rows[query]
        if job.rule.method == split_lib.QUERY_HASH:      # one md5 per query, not per row
            is_eval = is_eval_of.get(query)
            if is_eval is None:
                is_eval = is_eval_of[query] = job.rule.is_eval(query, ts)
        else:
            is_eval = job.rule.is_eval(query, ts)
        if is_eval:
            split = "eval"
            eval_queries.add(query)
        elif kind == LabelKind.NEGATIVE:
            split = "negative"
            negatives.setdefault(q_row, []).append(item_row)
        else:
            split = "train"
            train_queries.add(q_row)
        for name in (f"label_{kind}", f"split_{split}") + (("with_user",) if user_row >= 0
                                                             else ()):
            out[f"n/{name}"] = out.get(f"n/{name}", 0) + 1
        if user_row >= 0:
            by_user.write(job.int_part(user_row),
                          (user_row, pos, ts, q_row, item_row, kind, gain, split))
        elif split != "negative":
            records.add(split, pos, record_bytes(q_row, item_row, -1, 0, kind, gain))
    records.close(out)
    meta_lib.add_counts(out, "c/by_user", by_user.close())
    table = []
    for q_row, items in negatives.items():
        neg_items, _ = derived_tables.human_negative_table(
            np.zeros([len(items)], np.int64), np.asarray(items, np.int64), 1)
        table.append((q_row, neg_items))
    files_lib.write_piece(job.base, "human_negatives", part, table)
    lowers = files_lib.PartitionWriter(job.base, "eval_lower", part)
    for query in eval_queries:
        lowers.write(job.key_part(query.lower()), query.lower())
    meta_lib.add_counts(out, "c/eval_lower", lowers.close())
    out.update({"n/train_queries": len(train_queries), "n/eval_queries": len(eval_queries),
                "n/negative_queries": len(table)})
    return out


def pseudo_records(job: Job, meta: dict, rng: str) -> dict:
    """The pseudo-queries of one item range -> their records (rows after the logged queries)."""
    _, starts, _ = meta_lib.offsets(meta, "c/pseudo")
    _, _, num_logged = meta_lib.offsets(meta, "c/queries_first")
    items = files_lib.read_piece(job.base, "pseudo_items", rng)
    records = _Records(job, f"p{rng}", ("pseudo",))
    for local, item_row in enumerate(items.tolist()):
        index = starts[rng] + local
        records.add("pseudo", index, record_bytes(num_logged + index, item_row, -1, 0,
                                                  LabelKind.CLICK, 1.0))
    out = {}
    records.close(out)
    return out


def per_user(job: Job, part: str) -> dict:
    """One user-row partition: each user's history (prepare's user_histories on the user's
    rows alone) and the records of its interactions, with history_end."""
    by_user = {}
    for row in files_lib.read_partition(job.base, "by_user", part):
        by_user.setdefault(row[0], []).append(row[1:])
    records = _Records(job, f"u{part}")
    histories = []
    for user_row, items in by_user.items():
        items.sort(key=lambda it: it[0])
        n = len(items)
        order_key = np.array([it[1] if job.has_time else float(it[0]) for it in items],
                             np.float64)
        history, _, history_end = derived_tables.user_histories(
            np.zeros([n], np.int32), np.array([it[3] for it in items], np.int32),
            np.array([it[4] for it in items], np.int8), order_key, 1)
        if len(history):
            histories.append((user_row, history.astype(np.int32)))
        for (pos, _, q_row, item_row, kind, gain, split), end in zip(items,
                                                                     history_end.tolist()):
            if split != "negative":
                records.add(split, pos, record_bytes(q_row, item_row, user_row, end, kind, gain))
    files_lib.write_piece(job.base, "user_history", part, histories)
    out = {"n/users_with_history": len(histories)}
    records.close(out)
    return out


def eval_equal_pseudo(job: Job, part: str) -> dict:
    """Eval queries (distinct texts) whose lower case a pseudo-query spells, in one partition."""
    pseudo = set(files_lib.read_partition(job.base, "pseudo_lower", part))
    count = sum(1 for lowered in files_lib.read_partition(job.base, "eval_lower", part)
                if lowered in pseudo)
    return {"n/eval_equal_pseudo": count}
