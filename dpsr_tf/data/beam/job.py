"""What every task of the Beam prepare needs to know, and the keys rows are partitioned by.

A row's position is (file index, line) packed as file << 32 | line: position order is the file
order the single process reads in, so "first appearance" is "smallest position". Rows are
partitioned two ways:
  by hash    a string key (item_id, user_id, query) -> one of `partitions` partitions, so one
             reduce task sees every row of a key;
  by range   a position -> (file, line // range_lines), or a 52-bit record hash -> its top bits,
             so a reduce task sorts one range and its rows follow the earlier ranges' (the
             offsets are per-range counts, small metadata).
"""
import dataclasses
import hashlib
import struct
from typing import Dict, Optional, Tuple

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.tokenization import TokenizerConfig

LINE_MASK = (1 << 32) - 1
HASH_BITS = 52


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """The train/eval rule of split.SplitConfig, per row (the cutoff given, not computed)."""

    method: str
    modulus: int
    fold: int
    cutoff: Optional[float]

    def is_eval(self, query: str, timestamp: Optional[float]) -> bool:
        if self.method == split_lib.QUERY_HASH:
            return split_lib.is_eval_query(query, self.modulus, self.fold)
        return timestamp >= self.cutoff


@dataclasses.dataclass(frozen=True)
class Job:
    """Settings of one Beam prepare, pickled into every task.

    Attributes:
      base: directory (any Beam filesystem) of the intermediates and the layout pieces.
      partitions: hash partitions per intermediate.
      range_lines: lines of one file per position range.
      hash_range_bits: record hashes are cut into 2**hash_range_bits ranges.
      files: {"items"|"users"|"inter": input paths in order}.
      headers: {kind: the first file's header}; every file of the kind must have it.
      item_cols, user_cols (None without a users file), inter_cols: where the columns are.
      tokenizer: the tokenizer settings (vocab_file, if any, readable by every worker).
      pseudo: pseudo-query settings; rule: the split; seed: the record order's seed.
      has_time: the interactions have a timestamp column.
      auto_users: no users file; user_id values define the users.
      max_examples: examples per rejection reason in the report.
    """

    base: str
    partitions: int
    range_lines: int
    hash_range_bits: int
    files: Dict[str, Tuple[str, ...]]
    headers: Dict[str, Tuple[str, ...]]
    item_cols: rows_lib.TableColumns
    user_cols: Optional[rows_lib.TableColumns]
    inter_cols: rows_lib.InteractionColumns
    tokenizer: TokenizerConfig
    pseudo: pseudo_lib.PseudoQueryConfig
    rule: SplitRule
    seed: int
    has_time: bool
    auto_users: bool
    max_examples: int
    progress_every_s: float

    def path_of(self, kind: str, pos: int) -> str:
        return self.files[kind][pos >> 32]

    def key_part(self, key: str) -> str:
        return files_lib.part_name(files_lib.hash_partition(key, self.partitions))

    def int_part(self, value: int) -> str:
        return files_lib.part_name((value ^ (value >> 32)) % self.partitions)

    def pos_range(self, pos: int) -> str:
        return f"{pos >> 32:05d}-{(pos & LINE_MASK) // self.range_lines:07d}"

    def hash_range(self, hashed: int) -> str:
        return f"{hashed >> (HASH_BITS - self.hash_range_bits):07d}"


def position(file_index: int, line: int) -> int:
    return (file_index << 32) | line


def seeded_hash(seed: int, key: int) -> int:
    """A 52-bit hash of an int, the same in every process: the record order's shuffle key."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - HASH_BITS)


_RECORD = struct.Struct("<iiiiif")       # layout.RECORD_DTYPE, field by field
assert _RECORD.size == layout_lib.RECORD_DTYPE.itemsize


def record_bytes(q_row, item_row, user_row, history_end, kind, gain) -> bytes:
    """One layout record (layout.RECORD_DTYPE: query, item, user, history_end, label_kind
    int32, gain float32) as bytes."""
    return _RECORD.pack(q_row, item_row, user_row, history_end, kind, gain)
