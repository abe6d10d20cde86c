"""Tasks that build the items and users tables (read, resolve ids, number rows).

  read_table_file  one input file -> candidates and rejected ids, by hash of the id
  resolve_ids      one hash partition: each id's rows in file order through
                   rows.resolve_candidate (duplicates, bad titles) -> kept rows by position
                   range, why each rejected id was rejected (by hash), value counts
  rank_table       one position range: rows = the range's offset + rank by position -> the
                   table's pieces (ids, titles, tokens, categorical ids, pseudo-queries) and
                   (id, row) by hash of the id for the interaction joins

Each task returns its metadata (meta.py) and holds one partition or one range at a time.
"""
import dataclasses
from typing import List

import numpy as np

from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import meta as meta_lib
from dpsr_tf.data.beam.job import Job, position
from dpsr_tf.data.readers import TableReader

PSEUDO_CHUNK_ITEMS = 16384
SCHEMAS = {"items": schema.ITEMS, "users": schema.USERS, "inter": schema.INTERACTIONS}


def open_input(job: Job, kind: str, index: int) -> TableReader:
    """The reader of input file `index`, its header checked against the first file's."""
    path = job.files[kind][index]
    reader = TableReader(path, SCHEMAS[kind], job.progress_every_s)
    if tuple(reader.header) != job.headers[kind]:
        reader.close()
        raise schema.SchemaError(
            f"{path}:1: header {reader.header!r} differs from the first file's "
            f"{list(job.headers[kind])!r} ({job.files[kind][0]}); the files of one input share "
            f"a header")
    return reader


def reject_event(pos: int, rejection: rows_lib.Rejection):
    """A report.ReportFn event of a rejected row."""
    return ("reject", pos, rejection.reason.value,
            f"{rejection.path}:{rejection.line}: {rejection.message}")


def _cols(job: Job, kind: str) -> rows_lib.TableColumns:
    return job.item_cols if kind == "items" else job.user_cols


def read_table_file(job: Job, ctx, kind: str, index: int) -> dict:
    """Input file `index` of the items or users -> `<kind>_cand` and `<kind>_why` by id hash."""
    cols = _cols(job, kind)
    reader = open_input(job, kind, index)
    report = ctx.reports.create_accumulator()
    cands = files_lib.PartitionWriter(job.base, f"{kind}_cand", f"{index:05d}")
    whys = files_lib.PartitionWriter(job.base, f"{kind}_why", f"{index:05d}")
    for rec in reader:
        ctx.reports.add_input(report, ("read",))
        rejection, why, cand = rows_lib.classify_table_row(rec, reader.path, cols)
        pos = position(index, rec.line)
        if why is not None:
            whys.write(job.key_part(why[0]), (why[0], pos, why[1]))
        if rejection is not None:
            ctx.reports.add_input(report, reject_event(pos, rejection))
            continue
        cands.write(job.key_part(cand.row_id),
                    (pos, (cand.row_id, cand.line, cand.title, cand.values, cand.title_problem)))
    out = {f"rep/{kind}": report}
    meta_lib.add_counts(out, f"c/{kind}_cand", cands.close())
    meta_lib.add_counts(out, f"c/{kind}_why", whys.close())
    return out


def candidate(job: Job, kind: str, pos: int, fields) -> rows_lib.TableCandidate:
    row_id, line, title, values, problem = fields
    return rows_lib.TableCandidate(row_id, job.path_of(kind, pos), line, title, values, problem)


def resolve_ids(job: Job, ctx, kind: str, part: str) -> dict:
    """One id-hash partition: the single process's keep/reject decision for each row."""
    is_items = kind == "items"
    report = ctx.reports.create_accumulator()
    by_id = {}
    for pos, fields in files_lib.read_partition(job.base, f"{kind}_cand", part):
        by_id.setdefault(fields[0], []).append((pos, fields))
    first_why = {}                 # id -> (pos, text) of its first rejected definition
    for row_id, pos, text in files_lib.read_partition(job.base, f"{kind}_why", part):
        if row_id not in first_why or pos < first_why[row_id][0]:
            first_why[row_id] = (pos, text)
    kept = files_lib.PartitionWriter(job.base, f"{kind}_kept", part)
    out = {}
    for row_id, rows in by_id.items():
        rows.sort(key=lambda r: r[0])
        kept_at = None
        for pos, fields in rows:
            cand = candidate(job, kind, pos, fields)
            rejection, why = rows_lib.resolve_candidate(cand, kept_at, is_items)
            if why is not None and (row_id not in first_why or pos < first_why[row_id][0]):
                first_why[row_id] = (pos, why)
            if rejection is not None:
                ctx.reports.add_input(report, reject_event(pos, rejection))
                continue
            kept_at = (cand.path, cand.line)
            ctx.reports.add_input(report, ("kept",))
            kept.write(job.pos_range(pos), (pos, fields))
            for j, value in enumerate(cand.values):
                if value:
                    meta_lib.add_count(out, f"v/{kind}/{j}", value)
    del by_id
    files_lib.write_piece(job.base, f"{kind}_why_final", part,
                          [(row_id, text) for row_id, (_, text) in first_why.items()])
    out[f"rep/{kind}"] = report
    meta_lib.add_counts(out, f"c/{kind}_kept", kept.close())
    return out


def vocabularies(meta: dict, kind: str, num_columns: int) -> List[List[str]]:
    """Per column: its values by descending count, then value (prepare._Categorical.encode)."""
    out = []
    for j in range(num_columns):
        counts = meta.get(f"v/{kind}/{j}", {})
        out.append(sorted(counts, key=lambda v: (-counts[v], v)))
    return out


def rank_table(job: Job, ctx, meta: dict, kind: str, rng: str) -> dict:
    """One position range of kept rows -> the table's pieces and (id, row) by id hash."""
    _, starts, total = meta_lib.offsets(meta, f"c/{kind}_kept")
    start = starts[rng]
    rows = sorted(files_lib.read_partition(job.base, f"{kind}_kept", rng), key=lambda r: r[0])
    cands = [candidate(job, kind, pos, fields) for pos, fields in rows]
    del rows
    num_columns = len(_cols(job, kind).feature_names)
    lookup = ctx.vocab_lookup(meta, kind, num_columns)
    features = np.array([[lookup[j].get(v, 0) if v else 0 for j, v in enumerate(c.values)]
                         for c in cands], np.int32).reshape(len(cands), num_columns)
    files_lib.write_piece(job.base, f"{kind}_ids", rng, [c.row_id for c in cands])
    files_lib.write_piece(job.base, f"{kind}_features", rng, features)
    id_rows = files_lib.PartitionWriter(job.base, f"{kind}_rows", rng)
    for local, cand in enumerate(cands):
        id_rows.write(job.key_part(cand.row_id), (cand.row_id, start + local))
    id_rows.close()
    out = {}
    if kind == "items":
        titles = [c.title for c in cands]
        files_lib.write_piece(job.base, "items_titles", rng, titles)
        ids, lengths = ctx.tokenize(titles)
        files_lib.write_piece(job.base, "items_tokens", rng, (ids, lengths))
        out["n/item_tokens"] = int(len(ids))
        _pseudo_queries(job, ctx, cands, start, total, rng, out)
    return out


def _pseudo_queries(job: Job, ctx, cands, start: int, num_items: int, rng: str, out: dict):
    """pseudo_queries.generate for the items of one range (their rows start at `start`), in
    pieces of at most PSEUDO_CHUNK_ITEMS items and a quarter of a range (`<range>-<chunk>`), so
    memory is one piece's texts (up to per_item per item)."""
    config = job.pseudo
    if not config.per_item:
        return
    per_item = min(config.per_item, max(1, config.max_total // max(1, num_items)))
    config = dataclasses.replace(config, per_item=per_item)
    size = max(1, min(PSEUDO_CHUNK_ITEMS, job.range_lines // 4))
    for chunk, first in enumerate(range(0, len(cands), size)):
        texts, items = [], []
        for row, cand in enumerate(cands[first:first + size], start + first):
            queries = pseudo_lib.item_pseudo_queries(cand.title, cand.values, row, config)
            texts.extend(queries)
            items.extend([row] * len(queries))
        piece = f"{rng}-{chunk:05d}"
        meta_lib.add_count(out, "c/pseudo", piece, len(texts))
        if not texts:
            continue
        files_lib.write_piece(job.base, "pseudo_texts", piece, texts)
        files_lib.write_piece(job.base, "pseudo_tokens", piece, ctx.tokenize(texts))
        files_lib.write_piece(job.base, "pseudo_items", piece, np.asarray(items, np.int32))
        lowers = files_lib.PartitionWriter(job.base, "pseudo_lower", piece)
        for text in texts:
            lowered = text.lower()
            lowers.write(job.key_part(lowered), lowered)
        meta_lib.add_counts(out, "c/pseudo_lower", lowers.close())
