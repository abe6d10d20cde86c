"""The validation split: training queries carved out of a layout being written.

Both prepare paths (one process, Beam) write the train split, then `carve` moves the records of
a seeded share of its queries (split.validation_queries) to the VALIDATION split, with their
human negatives (from the per-query table; they carry no user). Early stopping and every
automatic choice read it (data/eval_set.choice_split), so the eval split, or a cross-validation
fold's held-out queries, is only reported. The moved queries leave every table built from the
train split afterwards (click graph, speller and rewrite sources, mined hard negatives).
"""
import os
from typing import Callable, Dict, List

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib


def _negative_records(out_dir: str, query_rows: np.ndarray) -> np.ndarray:
    """Human-negative records of `query_rows` from the layout's per-query table."""
    items = np.load(os.path.join(out_dir, layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS))
    splits = np.load(os.path.join(out_dir, layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS))
    counts = splits[query_rows + 1] - splits[query_rows]
    out = np.zeros([int(counts.sum())], layout_lib.RECORD_DTYPE)
    out["query_row"] = np.repeat(query_rows, counts)
    out["item_row"] = np.concatenate(
        [items[splits[q]:splits[q + 1]] for q in query_rows] or [np.zeros([0], np.int32)])
    out["user_row"] = -1
    out["label_kind"] = schema.LabelKind.NEGATIVE
    return out


def carve(config, out_dir: str, record_files: Dict[str, List[str]],
          num_records: Dict[str, int], record_checks: Dict[str, dict], counts: dict,
          split_info: dict, log: Callable[[str], None], write_records: Callable) -> None:
    """Moves the validation queries' train records of the layout in out_dir to VALIDATION.

    Updates record_files, num_records, record_checks, counts["splits"] and split_info (its
    "validation" entry) in place, for layout.json. config: the PrepareConfig
    (validation_fraction, min_validation_queries, seed, records_per_shard); write_records:
    layout_writer.write_records.
    """
    fraction, minimum = config.validation_fraction, config.min_validation_queries
    if fraction == 0.0:
        log("warning: no validation split (--validation_fraction=0): early stopping and the "
            "automatic choices fall back to the eval split, whose numbers are then optimistic")
        return
    train = np.concatenate([layout_lib.read_record_file(os.path.join(out_dir, rel))
                            for rel in record_files.get("train", [])]
                           or [np.zeros([0], layout_lib.RECORD_DTYPE)])
    texts = layout_lib.read_lines(os.path.join(out_dir, layout_lib.QUERY_TEXTS))
    num_train_queries = len(np.unique(train["query_row"]))
    chosen = split_lib.validation_queries(texts, train["query_row"], fraction, config.seed,
                                          minimum)
    info = {"fraction": fraction, "min_queries": minimum, "seed": config.seed,
            "queries": int(len(chosen)), "train_queries_before": int(num_train_queries)}
    split_info["validation"] = info
    if not len(chosen):
        log(f"warning: no validation split ({num_train_queries} training queries, fewer than "
            f"{split_lib.MIN_TRAIN_QUERIES_TO_CARVE}): early stopping and the automatic choices "
            f"fall back to the eval split, whose numbers are then optimistic")
        return
    if len(chosen) < minimum:
        log(f"warning: the validation split has only {len(chosen)} queries (of "
            f"{num_train_queries} training queries; fewer than {minimum}): early stopping and "
            f"the automatic choices made on it will be noisy; a larger log helps")
    info["rule"] = (f"{len(chosen)} of the {num_train_queries} training queries, seed "
                    f"{config.seed} (split.validation_queries)")
    moved = np.isin(train["query_row"], chosen)
    validation = np.concatenate([train[moved], _negative_records(out_dir, chosen)])
    for rel in record_files["train"]:
        os.remove(os.path.join(out_dir, rel))
        record_checks.pop(rel, None)
    for split, part in (("train", train[~moved]), (layout_lib.VALIDATION_SPLIT, validation)):
        record_files[split] = write_records(out_dir, split, part, config.records_per_shard,
                                            record_checks)
        num_records[split] = int(len(part))
        counts["splits"][split] = {"interactions": int(len(part)),
                                   "queries": int(len(np.unique(part["query_row"])))}
