"""Layout tables written as row blocks by the workers, then joined into the layout's files.

Workers write `parts/<table>/<block>.pkl`: the (row, value) pairs of rows
[block * BLOCK_ROWS, (block + 1) * BLOCK_ROWS) of one table, sorted by row. The launcher then
streams the blocks in row order into the files the input pipeline reads (text tables, .npy
arrays through a memory map), so no process holds a whole table: memory is one block.
"""
import os
import pickle
from typing import Iterator, Tuple

import numpy as np

from apache_beam.io.filesystems import FileSystems

BLOCK_ROWS = 1 << 16
PARTS_DIR = "parts"


def block_key(table: str):
    """Map fn: (row, value) -> ((table, block), (row, value))."""
    def key(row_value):
        return (table, row_value[0] // BLOCK_ROWS), row_value
    return key


def write_block(parts_dir: str):
    """Map fn over ((table, block), [(row, value)]): writes the block; returns (table, rows)."""
    def write(element):
        (table, block), rows = element
        rows = sorted(rows, key=lambda rv: rv[0])
        path = FileSystems.join(parts_dir, table, f"{block:08d}.pkl")
        if not FileSystems.exists(FileSystems.join(parts_dir, table)):
            _mkdirs_safe(FileSystems.join(parts_dir, table))
        with FileSystems.create(path) as f:
            f.write(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        return table, len(rows)
    return write


def _mkdirs_safe(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except OSError:
        pass                       # another worker made it


def iter_rows(parts_dir: str, table: str) -> Iterator[Tuple[int, object]]:
    """(row, value) of a table in row order (blocks in order, rows sorted within)."""
    directory = os.path.join(parts_dir, table)
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            yield from pickle.load(f)


def _dense(parts_dir: str, table: str, num_rows: int) -> Iterator[object]:
    expected = 0
    for row, value in iter_rows(parts_dir, table):
        if row != expected:
            raise RuntimeError(f"table {table}: row {expected} is missing (found {row}); the "
                               f"pipeline lost rows")
        expected += 1
        yield value
    if expected != num_rows:
        raise RuntimeError(f"table {table}: {expected} rows, expected {num_rows}")


def write_lines(parts_dir: str, table: str, path: str, num_rows: int) -> None:
    """A text table (one value per line) of num_rows rows."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for value in _dense(parts_dir, table, num_rows):
            f.write(value + "\n")


def write_matrix(parts_dir: str, table: str, path: str, num_rows: int, width: int) -> None:
    """[num_rows, width] int32 .npy from rows of int32 [width] arrays."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(num_rows, width))
    if width:
        for row, value in enumerate(_dense(parts_dir, table, num_rows)):
            out[row] = value
    out.flush()
    del out


def write_ragged(parts_dir: str, table: str, values_path: str, splits_path: str,
                 num_rows: int, dense: bool) -> int:
    """A ragged int32 table (values [T] int32, splits [num_rows + 1] int64).

    Args:
      dense: every row must be present; else missing rows are empty.

    Returns:
      T, the number of values.
    """
    def rows():
        return iter_rows(parts_dir, table)
    os.makedirs(os.path.dirname(values_path), exist_ok=True)
    lengths = np.zeros([num_rows], np.int64)
    present = 0
    for row, value in rows():
        if row >= num_rows:
            raise RuntimeError(f"{values_path}: row {row} beyond {num_rows}")
        lengths[row] = len(value)
        present += 1
    if dense and present != num_rows:
        raise RuntimeError(f"{values_path}: {present} rows, expected {num_rows}")
    splits = np.zeros([num_rows + 1], np.int64)
    np.cumsum(lengths, out=splits[1:])
    total = int(splits[-1])
    values = np.lib.format.open_memmap(values_path, mode="w+", dtype=np.int32, shape=(total,))
    for row, value in rows():
        values[splits[row]:splits[row + 1]] = value
    values.flush()
    del values
    np.save(splits_path, splits)
    return total


def read_single(parts_dir: str, table: str, default=None):
    """The value of row 0 of a one-row table (counts, vocabularies, reports)."""
    for _, value in iter_rows(parts_dir, table):
        return value
    return default
