"""Writing a training layout's files, shared by both prepare paths (one process, Beam): arrays,
interaction record shards with their checks, layout.json (layout.write_layout_spec) and the
prepare report; and the two refusals before and after reading (an output that is not a layout,
too many rejected rows)."""
import dataclasses
import os
import zlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import schema
from dpsr_tf.data import validation_split
from dpsr_tf.data.schema import PrepareError
from dpsr_tf.tokenization import TokenizerConfig


def save_array(path: str, array_: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(array_))


def write_records(out_dir: str, split: str, records: np.ndarray, per_shard: int,
                   checks: Optional[Dict[str, dict]] = None) -> List[str]:
    """Writes a split's record files; `checks` receives each file's records, bytes and CRC-32
    (layout.json "record_checks", verified before training)."""
    shards = max(1, -(-len(records) // per_shard))
    paths = []
    for s in range(shards):
        rel = f"{layout_lib.INTERACTIONS_DIR}/{split}-{s:05d}-of-{shards:05d}.rec"
        part = records[s * per_shard:(s + 1) * per_shard]
        os.makedirs(os.path.join(out_dir, layout_lib.INTERACTIONS_DIR), exist_ok=True)
        header, body = layout_lib.record_header(len(part)), part.tobytes()
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(header)
            f.write(body)
        if checks is not None:
            checks[rel] = {"records": int(len(part)), "bytes": len(header) + len(body),
                           "crc32": f"{zlib.crc32(body, zlib.crc32(header)):08x}"}
        paths.append(rel)
    return paths


def check_output(path: str) -> None:
    if os.path.exists(path) and not (
            os.path.isdir(path) and (not os.listdir(path)
                                     or os.path.isfile(os.path.join(path, layout_lib.LAYOUT_JSON)))):
        raise PrepareError(f"--output {path} exists and is not a training layout; refusing to "
                           f"replace it (choose a new directory)")


def check_fractions(reports: Sequence[schema.FileReport], max_fraction: float) -> None:
    for rep in reports:
        if rep.rows_read and rep.rows_rejected / rep.rows_read > max_fraction:
            raise PrepareError(
                f"{rep.path}: {rep.rows_rejected:,} of {rep.rows_read:,} rows rejected "
                f"({100.0 * rep.rows_rejected / rep.rows_read:.1f}% > "
                f"--max_reject_fraction={max_fraction}); see the reasons above. Wrong file, "
                f"column or delimiter?")


def write_metadata(config, out_dir: str, tok_config: TokenizerConfig,
                   token_id_space: int, reports: Sequence[schema.FileReport], sizes: dict,
                   item_features: Dict[str, int], user_features: Dict[str, int],
                   counts: dict, split_info: dict, record_files: Dict[str, List[str]],
                   num_records: Dict[str, int], record_checks: Dict[str, dict],
                   log: Callable[[str], None]) -> layout_lib.LayoutSpec:
    """Carves the validation split out of the train split (validation_split.carve), then writes
    layout.json and prepare_report.txt (both prepare paths); logs the summary.

    Args:
      config: the PrepareConfig; its output is where out_dir, the layout being built, goes.
      sizes: num_items, num_users, num_queries (logged + pseudo), num_logged_queries.
      counts: labels, splits, item_tokens, pseudo_queries, eval_queries_equal_to_a_pseudo_query,
        train_human_negatives, interactions_with_user, users_with_history.

    Returns:
      The LayoutSpec written to layout.json.
    """
    validation_split.carve(config, out_dir, record_files, num_records, record_checks, counts,
                           split_info, log, write_records)
    extra = dict(counts)
    item_token_count = extra.pop("item_tokens")
    counts = {rep.kind: rep.to_dict() for rep in reports}
    counts.update(extra)
    counts["items"]["tokens"] = int(item_token_count)
    layout_dir = os.path.abspath(config.output)
    prepare_config = dataclasses.asdict(config)
    prepare_config["tokenizer"] = dataclasses.asdict(tok_config)
    if tok_config.vocab_file:   # prepare copied it into the layout
        tok_config = dataclasses.replace(
            tok_config, vocab_file=os.path.join(layout_dir, layout_lib.VOCAB_TXT))
        prepare_config["tokenizer"]["vocab_file"] = layout_lib.VOCAB_TXT
    spec = layout_lib.LayoutSpec(
        layout_dir=layout_dir,
        tokenizer_config=tok_config,
        token_id_space=int(token_id_space),
        num_items=sizes["num_items"],
        num_users=sizes["num_users"],
        num_queries=sizes["num_queries"],
        item_features=item_features,
        user_features=user_features,
        history_length=config.history_length,
        counts=counts,
        split=split_info,
        eval_min_gain=config.eval_min_gain,
        record_files=record_files,
        num_records=num_records,
        record_checks=record_checks,
        num_logged_queries=sizes["num_logged_queries"],
        prepare_config=prepare_config,
    )
    layout_lib.write_layout_spec(spec, out_dir)
    pseudo_count = counts["pseudo_queries"]
    summary = [
        f"items: {sizes['num_items']:,} ({item_token_count:,} title tokens); "
        f"item features {item_features}",
        f"users: {sizes['num_users']:,}; user features {user_features}; "
        f"{counts['users_with_history']:,} with a history",
        f"queries: {sizes['num_logged_queries']:,} distinct (+ {pseudo_count:,} pseudo-queries)",
        f"human negatives of train queries: {counts['train_human_negatives']['pairs']:,} pairs "
        f"over {counts['train_human_negatives']['queries']:,} queries (a per-query table)",
        f"labels: {counts['labels']}",
        f"split ({split_info['rule']}): train {num_records['train']:,} interactions / "
        f"{counts['splits']['train']['queries']:,} queries; eval {num_records['eval']:,} / "
        f"{counts['splits']['eval']['queries']:,}"
        + (f"; validation (carved from the training queries, early stopping and automatic "
           f"choices) {num_records[layout_lib.VALIDATION_SPLIT]:,} / "
           f"{counts['splits'][layout_lib.VALIDATION_SPLIT]['queries']:,}"
           if layout_lib.VALIDATION_SPLIT in num_records else "; no validation split"),
    ]
    for line in summary:
        log(line)
    with open(os.path.join(out_dir, layout_lib.REPORT_TXT), "w", encoding="utf-8") as f:
        f.write("\n".join([rep.format() for rep in reports] + summary) + "\n")
    return spec
