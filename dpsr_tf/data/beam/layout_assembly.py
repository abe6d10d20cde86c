"""The launcher's last step of a Beam prepare: the workers' pieces joined into the layout.

The pipeline leaves every table as pieces (files.py) and its counts in the merged metadata;
this streams the pieces into the files and layout.json the single-process prepare writes.
Memory is one piece (one position range or hash partition); only the two tables whose rows
arrive out of order (user histories, human negatives: sparse pieces) are written through
memory maps. Every dense table's row count is checked.
"""
import os
import zlib
from typing import Dict, Iterable, Iterator, List

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import layout_writer
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import meta as meta_lib
from dpsr_tf.data.beam import report as report_lib
from dpsr_tf.data.beam import table_tasks
from dpsr_tf.tokenization import Tokenizer

REPORT_KINDS = (("items", "items"), ("users", "users"), ("inter", "interactions"))


def _check_rows(table: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"table {table}: {got} rows, expected {expected}; the pipeline lost "
                           f"rows")


def _write_lines(base: str, tables: Iterable[str], path: str, expected: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for table in tables:
            for piece in files_lib.iter_pieces(base, table):
                f.write("".join(value + "\n" for value in piece))
                rows += len(piece)
    _check_rows(path, rows, expected)


def _npy_writer(path: str, dtype, shape):
    """A file open after the .npy header of an array of `shape`, for its C-order bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str,
                                             "fortran_order": False, "shape": tuple(shape)})
    return f


def _write_matrix(base: str, table: str, path: str, num_rows: int, width: int) -> None:
    """[num_rows, width] int32 .npy from pieces of [n, width] int32 arrays, streamed."""
    row = 0
    with _npy_writer(path, np.int32, (num_rows, width)) as f:
        if not width:              # no feature columns (users from the interactions)
            return
        for piece in files_lib.iter_pieces(base, table):
            if row + len(piece) > num_rows:
                _check_rows(path, row + len(piece), num_rows)
            f.write(np.ascontiguousarray(piece, np.int32).tobytes())
            row += len(piece)
    _check_rows(path, row, num_rows)


def _ragged(values_path: str, splits_path: str, num_rows: int, lengths_of, values_of) -> int:
    """Writes values [T] int32 and splits [num_rows + 1] int64 in two passes over the pieces:
    lengths_of() yields (row, length), values_of() yields (row, values). Returns T."""
    os.makedirs(os.path.dirname(values_path), exist_ok=True)
    splits = np.lib.format.open_memmap(splits_path, mode="w+", dtype=np.int64,
                                       shape=(num_rows + 1,))
    splits[:] = 0
    for row, length in lengths_of():
        if not 0 <= row < num_rows:
            raise RuntimeError(f"{values_path}: row {row} outside [0, {num_rows})")
        splits[row + 1] = length
    np.cumsum(splits, out=splits)
    total = int(splits[-1])
    values = np.lib.format.open_memmap(values_path, mode="w+", dtype=np.int32, shape=(total,))
    for row, value in values_of():
        values[splits[row]:splits[row + 1]] = value
    values.flush()
    splits.flush()
    del values, splits
    return total


def _dense_ragged(base: str, tables: List[str], values_path: str, splits_path: str,
                  num_rows: int) -> int:
    """A ragged table from dense pieces of (ids [T] int32, lengths [n] int64), in order, both
    arrays streamed: the splits in a first pass over the pieces, the values in a second."""
    def pieces() -> Iterator:
        for table in tables:
            yield from files_lib.iter_pieces(base, table)

    row, total = 0, 0
    with _npy_writer(splits_path, np.int64, (num_rows + 1,)) as f:
        f.write(np.zeros([1], np.int64).tobytes())
        for _, lengths in pieces():
            if row + len(lengths) > num_rows:
                _check_rows(values_path, row + len(lengths), num_rows)
            ends = total + np.cumsum(np.asarray(lengths, np.int64))
            f.write(ends.tobytes())
            total = int(ends[-1]) if len(ends) else total
            row += len(lengths)
    _check_rows(values_path, row, num_rows)
    written = 0
    with _npy_writer(values_path, np.int32, (total,)) as f:
        for ids, _ in pieces():
            f.write(np.asarray(ids, np.int32).tobytes())
            written += len(ids)
    if written != total:
        raise RuntimeError(f"{values_path}: {written} values, the lengths say {total}")
    return total


def _sparse_ragged(base: str, table: str, values_path: str, splits_path: str,
                   num_rows: int) -> int:
    """A ragged table from sparse pieces of (row, int32 values); missing rows are empty."""
    def lengths_of():
        for piece in files_lib.iter_pieces(base, table):
            for row, value in piece:
                yield row, len(value)

    def values_of():
        for piece in files_lib.iter_pieces(base, table):
            yield from piece
    return _ragged(values_path, splits_path, num_rows, lengths_of, values_of)


def _write_record_files(base: str, out_dir: str, split: str, total: int, per_shard: int,
                        checks: Dict[str, dict]) -> List[str]:
    """Streams a split's record pieces into files of per_shard records (the single process's
    shard sizes and names); `checks` gets each file's records, bytes and CRC-32."""
    size_of = layout_lib.RECORD_DTYPE.itemsize
    stream = (bytes(piece) for piece in files_lib.iter_pieces(base, f"records_{split}"))
    pending = b""
    shards = max(1, -(-total // per_shard))
    rels, written = [], 0
    for shard in range(shards):
        count = min(per_shard, total - shard * per_shard)
        rel = f"{layout_lib.INTERACTIONS_DIR}/{split}-{shard:05d}-of-{shards:05d}.rec"
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        header = layout_lib.record_header(count)
        crc, size, need = zlib.crc32(header), len(header), count * size_of
        with open(path, "wb") as f:
            f.write(header)
            while need:
                if not pending:
                    pending = next(stream, None)
                    if pending is None:
                        raise RuntimeError(f"{split} records: {written} of {total} arrived")
                body, pending = pending[:need], pending[need:]
                f.write(body)
                crc = zlib.crc32(body, crc)
                size += len(body)
                need -= len(body)
                written += len(body) // size_of
        checks[rel] = {"records": count, "bytes": size, "crc32": f"{crc:08x}"}
        rels.append(rel)
    if pending or next(stream, None):
        raise RuntimeError(f"{split} records: more than the {total} counted")
    return rels


def assemble_layout(config, tmp: str, base: str, meta: dict, job, tok_config, inter_notes,
                    log) -> None:
    """Joins the pieces into the layout files and writes layout.json (the launcher's part)."""
    reports = []
    for kind, name in REPORT_KINDS:
        if kind not in job.files:
            continue
        rep = schema.FileReport(config.interactions if kind == "inter" else getattr(config, kind),
                                name, config.max_examples)
        acc = meta.get(f"rep/{kind}")
        if acc is not None:
            report_lib.fill_report(rep, report_lib.ReportFn(config.max_examples)
                                   .extract_output(acc))
        if kind == "inter":
            rep.notes.extend(inter_notes)
        reports.append(rep)
    for rep in reports:
        log(rep.format())
    n = {k[2:]: v for k, v in meta.items() if k.startswith("n/")}
    _, _, num_items = meta_lib.offsets(meta, "c/items_kept")
    if not num_items:
        raise prepare_lib.PrepareError(f"{config.items}: no valid item rows")
    kept = sum(v for k, v in n.items() if k.startswith("label_"))
    if not kept:
        raise prepare_lib.PrepareError(f"{config.interactions}: no valid interaction rows")
    layout_writer.check_fractions(reports, config.max_reject_fraction)
    users_key = "c/users_first" if job.auto_users else "c/users_kept"
    num_users = meta_lib.offsets(meta, users_key)[2] if (job.auto_users or job.user_cols) else 0
    num_logged = meta_lib.offsets(meta, "c/queries_first")[2]
    num_pseudo = meta_lib.offsets(meta, "c/pseudo")[2]
    num_queries = num_logged + num_pseudo
    if num_pseudo:
        log(f"pseudo-queries: {num_pseudo:,} from the catalog")

    def path(rel):
        return os.path.join(tmp, rel)

    _write_lines(base, ["items_ids"], path(layout_lib.ITEM_IDS), num_items)
    _write_lines(base, ["items_titles"], path(layout_lib.ITEM_TITLES), num_items)
    item_token_count = _dense_ragged(base, ["items_tokens"], path(layout_lib.ITEM_TOKEN_IDS),
                                     path(layout_lib.ITEM_TOKEN_SPLITS), num_items)
    item_names = list(job.item_cols.feature_names)
    _write_matrix(base, "items_features", path(layout_lib.ITEM_FEATURES), num_items,
                  len(item_names))
    item_vocabs = table_tasks.vocabularies(meta, "items", len(item_names))
    os.makedirs(path(layout_lib.ITEM_VOCAB_DIR), exist_ok=True)
    for name, vocab in zip(item_names, item_vocabs):
        layout_lib.write_lines(path(f"{layout_lib.ITEM_VOCAB_DIR}/{name}.txt"), vocab)
    _write_lines(base, ["users_ids"], path(layout_lib.USER_IDS), num_users)
    user_names = list(job.user_cols.feature_names) if job.user_cols is not None else []
    _write_matrix(base, "users_features", path(layout_lib.USER_FEATURES), num_users,
                  len(user_names))
    user_vocabs = table_tasks.vocabularies(meta, "users", len(user_names))
    os.makedirs(path(layout_lib.USER_VOCAB_DIR), exist_ok=True)
    for name, vocab in zip(user_names, user_vocabs):
        layout_lib.write_lines(path(f"{layout_lib.USER_VOCAB_DIR}/{name}.txt"), vocab)
    _sparse_ragged(base, "user_history", path(layout_lib.USER_HISTORY_ITEMS),
                   path(layout_lib.USER_HISTORY_SPLITS), num_users)
    _write_lines(base, ["queries_ids", "pseudo_texts"], path(layout_lib.QUERY_TEXTS),
                 num_queries)
    _dense_ragged(base, ["queries_tokens", "pseudo_tokens"], path(layout_lib.QUERY_TOKEN_IDS),
                  path(layout_lib.QUERY_TOKEN_SPLITS), num_queries)
    _sparse_ragged(base, "human_negatives", path(layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS),
                   path(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS), num_queries)

    record_files, num_records, record_checks = {}, {}, {}
    for split in ("train", "eval", "pseudo"):
        total = meta_lib.offsets(meta, f"c/records_{split}")[2]
        if split == "pseudo" and not total:
            continue
        record_files[split] = _write_record_files(base, tmp, split, total,
                                                  config.records_per_shard, record_checks)
        num_records[split] = total
    if num_records["train"] != n.get("split_train", 0) or num_records["eval"] != n.get(
            "split_eval", 0) or num_records.get("pseudo", 0) != num_pseudo:
        raise RuntimeError(f"records {num_records} differ from the counted splits {n}")

    split_info = {"method": config.split.method}
    if config.split.method == split_lib.QUERY_HASH:
        split_info["modulus"] = config.split.modulus
        split_info["fold"] = config.split.fold
        split_info["rule"] = config.split.rule()
    else:
        split_info["time_cutoff"] = config.split.time_cutoff
        split_info["rule"] = f"eval iff timestamp >= {config.split.time_cutoff}"
    tokenizer = Tokenizer(tok_config)
    counts = {
        "labels": {schema.LABEL_NAMES[k]: int(n.get(f"label_{int(k)}", 0))
                   for k in schema.LabelKind},
        "splits": {
            "train": {"interactions": int(n.get("split_train", 0)),
                      "queries": int(n.get("train_queries", 0))},
            "eval": {"interactions": int(n.get("split_eval", 0)),
                     "queries": int(n.get("eval_queries", 0))}},
        "item_tokens": int(item_token_count),
        "pseudo_queries": int(num_pseudo),
        "eval_queries_equal_to_a_pseudo_query": int(n.get("eval_equal_pseudo", 0)),
        "train_human_negatives": {"pairs": int(n.get("split_negative", 0)),
                                  "queries": int(n.get("negative_queries", 0))},
        "interactions_with_user": int(n.get("with_user", 0)),
        "users_with_history": int(n.get("users_with_history", 0)),
    }
    sizes = {"num_items": num_items, "num_users": num_users, "num_queries": num_queries,
             "num_logged_queries": num_logged}
    item_features = {name: len(v) + 1 for name, v in zip(item_names, item_vocabs)}
    user_features = {name: len(v) + 1 for name, v in zip(user_names, user_vocabs)}
    layout_writer.write_metadata(config, tmp, tok_config, tokenizer.id_space, reports, sizes,
                                 item_features, user_features, counts, split_info,
                                 record_files, num_records, record_checks, log)
