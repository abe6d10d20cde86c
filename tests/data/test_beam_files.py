"""The Beam prepare's intermediates: partition files, pieces and the merged metadata."""
import zlib

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from dpsr_tf.data.beam import files as files_lib  # pylint: disable=wrong-import-position
from dpsr_tf.data.beam import meta as meta_lib  # pylint: disable=wrong-import-position
from dpsr_tf.data.beam.report import ReportFn  # pylint: disable=wrong-import-position


def test_hash_partition_is_crc32_of_utf8():
    # Not Python's salted hash(): every worker process must agree.
    assert files_lib.hash_partition("P00000001", 7) == zlib.crc32(b"P00000001") % 7
    assert files_lib.hash_partition("\u00e9t\u00e9", 5) == zlib.crc32("\u00e9t\u00e9".encode()) % 5


def test_partition_files_round_trip_in_task_then_write_order(tmp_path):
    base = str(tmp_path)
    n = files_lib.CHUNK_ROWS * 2 + 17                 # several chunks per file
    expected = {"00000": [], "00001": []}
    for task in ("t1", "t0"):                         # written out of name order
        writer = files_lib.PartitionWriter(base, "rows", task)
        for i in range(n):
            part = files_lib.part_name(i % 2)
            writer.write(part, (task, i))
        counts = writer.close()
        assert counts == {"00000": (n + 1) // 2, "00001": n // 2}
    for task in ("t0", "t1"):                         # read back in task name order
        for i in range(n):
            expected[files_lib.part_name(i % 2)].append((task, i))
    for part, rows in expected.items():
        assert list(files_lib.read_partition(base, "rows", part)) == rows
    assert not list(files_lib.read_partition(base, "rows", "00002"))   # no file, no rows


def test_pieces_in_name_order(tmp_path):
    base = str(tmp_path)
    files_lib.write_piece(base, "ids", "00001-0000000", ["c"])
    files_lib.write_piece(base, "ids", "00000-0000001", ["b"])
    files_lib.write_piece(base, "ids", "00000-0000000", ["a"])
    files_lib.write_piece(base, "tokens", "x", (np.arange(3, dtype=np.int32), None))
    assert [p for piece in files_lib.iter_pieces(base, "ids") for p in piece] == ["a", "b", "c"]
    np.testing.assert_array_equal(files_lib.read_piece(base, "tokens", "x")[0], [0, 1, 2])
    assert files_lib.read_piece(base, "tokens", "missing", "default") == "default"


def test_metadata_merges_by_type_and_gives_range_offsets():
    reports = ReportFn(max_examples=2)
    a = reports.add_input(reports.create_accumulator(), ("read",))
    b = reports.add_input(reports.add_input(reports.create_accumulator(), ("read",)), ("kept",))
    merged = meta_lib.MergeMeta(2).merge_accumulators([
        {"n/x": 2, "c/ranges": {"00001-0000000": 5, "00000-0000002": 3}, "rep/items": a},
        {"n/x": 3, "c/ranges": {"00000-0000002": 1, "00000-0000000": 4}, "rep/items": b}])
    assert merged["n/x"] == 5
    assert merged["rep/items"][:2] == [2, 1]                     # rows read, rows kept
    names, starts, total = meta_lib.offsets(merged, "c/ranges")
    # Ranges in (file, range) order; each starts after the rows of the ranges before it.
    assert names == ["00000-0000000", "00000-0000002", "00001-0000000"]
    assert starts == {"00000-0000000": 0, "00000-0000002": 4, "00001-0000000": 8}
    assert total == 13
