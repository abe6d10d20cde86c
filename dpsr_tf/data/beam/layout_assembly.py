"""The launcher's last step of a Beam prepare: the workers' table blocks joined into the layout.

The pipeline leaves every table as row blocks under parts/ (blocks.py); this streams them, in
row order, into the files and layout.json the single-process prepare writes, so memory is one
block, and checks that every row arrived.
"""
import os
import zlib
from typing import Dict, List

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import layout_writer
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import blocks
from dpsr_tf.data.beam import report as report_lib
from dpsr_tf.tokenization import Tokenizer


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


def assemble_layout(config, tmp, parts, tok_config, rule, item_cols, user_cols, inter_notes,
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
