"""The mined hard negatives of a training run: a per-query table in the model directory.

`dpsr train --hard_negatives_from=M` (dpsr_tf/indexing/hard_negatives.py mines it) writes

  <model_dir>/hard_negatives/items.npy       int32 [T]  item rows, query by query
  <model_dir>/hard_negatives/splits.npy      int64 [num_queries + 1]
  <model_dir>/hard_negatives/provenance.json which model, checkpoint, layout, rank window,
                                             seed and splits made it, counts and seconds

query row q's hard negatives are items[splits[q]:splits[q + 1]] (empty for queries that were
not mined). The training input (dpsr_tf/data/pipeline.py) joins up to
ModelConfig.max_hard_negatives of them to every example of query q, the way the layout's
human-negative table is joined. This module reads and writes the files through tf.io.gfile,
so model_dir may be on any filesystem TensorFlow reads (gs://, hdfs://) as its checkpoints are.
"""
import io
import json
import os
import time
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

TABLE_DIR = "hard_negatives"
ITEMS_FILE = "items.npy"
SPLITS_FILE = "splits.npy"
PROVENANCE_FILE = "provenance.json"


def absolute(path: str) -> str:
    """A local path made absolute; a filesystem URL (gs://, hdfs://) as it is."""
    return path if "://" in path else os.path.abspath(path)


# The provenance fields that must match for a table to be reused by a resumed run.
KEY_FIELDS = ("source_model_dir", "checkpoint", "layout_dir", "num_items", "num_queries",
              "ranks", "per_query", "splits", "seed")


def mined_splits(requested: Sequence[str], spec) -> Tuple[str, ...]:
    """The record splits a --hard_negative_splits value mines on this layout: the requested
    ones, except that "pseudo" is skipped on a layout prepared without pseudo-queries (the
    default asks for train and pseudo).

    Raises:
      ValueError: nothing left, a split the layout lacks, or eval.
    """
    names = tuple(s for s in requested if s != "pseudo" or "pseudo" in spec.record_files)
    if not names or any(s not in spec.record_files for s in names):
        raise ValueError(f"--hard_negative_splits={','.join(requested)}: the layout "
                         f"{spec.layout_dir} has the splits {list(spec.record_files)}")
    if "eval" in names:
        raise ValueError(f"--hard_negative_splits={','.join(requested)}: mining the eval split "
                         f"trains on its queries; use train and/or pseudo")
    return names


def table_dir(model_dir: str) -> str:
    """<model_dir>/hard_negatives."""
    return os.path.join(model_dir, TABLE_DIR)


def table_paths(model_dir: str) -> Tuple[str, str]:
    """(items.npy, splits.npy) paths of the table in model_dir."""
    d = table_dir(model_dir)
    return os.path.join(d, ITEMS_FILE), os.path.join(d, SPLITS_FILE)


def read_provenance(model_dir: str) -> Optional[dict]:
    """The table's provenance record, or None when model_dir holds no complete table."""
    gfile = tf.io.gfile
    path = os.path.join(table_dir(model_dir), PROVENANCE_FILE)
    items, splits = table_paths(model_dir)
    if not (gfile.exists(path) and gfile.exists(items) and gfile.exists(splits)):
        return None
    with gfile.GFile(path) as f:
        return json.load(f)


def same_key(a: dict, b: dict) -> bool:
    """True when two provenance records describe the same mining (KEY_FIELDS equal)."""
    return all(json.dumps(a.get(k)) == json.dumps(b.get(k)) for k in KEY_FIELDS)


def wait_for_table(model_dir: str, key: dict, timeout_s: float, *, poll_s: float = 5.0,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> Optional[dict]:
    """Waits until model_dir holds a complete table whose provenance has `key` (same_key) and
    returns that provenance; None after timeout_s. A table of another key (left by an earlier
    run, about to be replaced) is waited past, not read."""
    deadline = clock() + timeout_s
    while True:
        provenance = read_provenance(model_dir)
        if provenance is not None and same_key(provenance, key):
            return provenance
        if clock() > deadline:
            return None
        sleep(poll_s)


def write_table(model_dir: str, items: np.ndarray, splits: np.ndarray, provenance: dict) -> str:
    """Writes the table and its provenance (the provenance last: it marks the table complete).

    Args:
      items: [T] int item rows; splits: [num_queries + 1] int64 non-decreasing from 0 to T.
      provenance: JSON-serializable record (KEY_FIELDS and anything else worth keeping).

    Returns:
      the table directory.
    """
    items = np.asarray(items, np.int32)
    splits = np.asarray(splits, np.int64)
    if splits.ndim != 1 or len(splits) < 1 or splits[0] != 0 or splits[-1] != len(items) \
            or np.any(np.diff(splits) < 0):
        raise ValueError(f"hard-negative splits must run from 0 to {len(items)} without "
                         f"decreasing, got {splits[:5]}...{splits[-3:]}")
    gfile = tf.io.gfile
    d = table_dir(model_dir)
    gfile.makedirs(d)
    prov_path = os.path.join(d, PROVENANCE_FILE)
    if gfile.exists(prov_path):
        gfile.remove(prov_path)
    items_path, splits_path = table_paths(model_dir)
    for path, array in ((items_path, items), (splits_path, splits)):
        with gfile.GFile(path, "wb") as f:
            np.save(f, array)
    tmp = prov_path + ".tmp"
    with gfile.GFile(tmp, "w") as f:
        json.dump(provenance, f, indent=2, sort_keys=True)
    gfile.rename(tmp, prov_path, overwrite=True)
    return d


def load_table(model_dir: str, num_queries: Optional[int] = None) -> Tuple[np.ndarray,
                                                                          np.ndarray]:
    """(items [T] int32, splits [num_queries + 1] int64) of model_dir's table.

    Raises:
      ValueError: no complete table, or one for another number of queries.
    """
    if read_provenance(model_dir) is None:
        raise ValueError(f"{table_dir(model_dir)}: no mined hard-negative table (train with "
                         f"--hard_negatives_from=MODEL_DIR to mine one)")
    items_path, splits_path = table_paths(model_dir)
    items, splits = (_load_npy(p) for p in (items_path, splits_path))
    if num_queries is not None and len(splits) != num_queries + 1:
        raise ValueError(f"{splits_path}: a table of {len(splits) - 1} queries, the layout has "
                         f"{num_queries}; delete {table_dir(model_dir)} to mine it again")
    return items, splits


def _load_npy(path: str) -> np.ndarray:
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)
