"""dpsr prepare on damaged files (and the layout integrity check):
every damage is a clear error naming the file, or a rejected row with its line, with memory
bounded whatever the input; a layout whose record file was cut is refused before training.

Before: a truncated .gz died with a raw EOFError traceback; a corrupt one said "CRC check
failed" without the file; a 1 MB .gz holding a 1 GiB line peaked at 2.4 GB and was reported as
"malformed quoting"; a record file cut at a record boundary trained on 40 of 11,737 records."""
import gzip
import os
import shutil
import subprocess
import sys
import tracemalloc
import zlib

import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import readers, schema
from dpsr_tf.data.schema import Reason

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITEMS = "item_id\ttitle\nA\tApple iPhone 15\nB\tFresh apples 1kg\nC\tCordless drill 20V\n"
INTER_HEADER = "query\titem_id\tlabel\n"
ROWS = "".join(f"{q}\t{i}\tclick\n" for q, i in (("apple phone", "A"), ("apples", "B"),
                                                 ("drill", "C"))) * 200


def _config(tmp_path, interactions, items=None):
    if items is None:
        items = tmp_path / "items.tsv"
        items.write_text(ITEMS, encoding="utf-8")
    return prepare_lib.PrepareConfig(
        items=str(items), interactions=str(interactions), output=str(tmp_path / "layout"),
        max_reject_fraction=1.0, pseudo_queries=pseudo_lib.PseudoQueryConfig(per_item=0),
        records_per_shard=100)


def _gz(path, data: bytes) -> bytes:
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path.read_bytes()


def _truncated(tmp_path):
    path = tmp_path / "inter.tsv.gz"
    blob = _gz(path, (INTER_HEADER + ROWS).encode())
    path.write_bytes(blob[:len(blob) // 2])
    return path


def _corrupt(tmp_path):
    path = tmp_path / "inter.tsv.gz"
    blob = bytearray(_gz(path, (INTER_HEADER + ROWS).encode()))
    blob[-6] ^= 0xFF  # a CRC-32 byte of the trailer
    path.write_bytes(bytes(blob))
    return path


def _garbage_inside(tmp_path):
    path = tmp_path / "inter.tsv.gz"
    blob = bytearray(_gz(path, (INTER_HEADER + ROWS).encode()))
    for i in range(40, 60):
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))
    return path


def _not_gzip(tmp_path):
    path = tmp_path / "inter.tsv.gz"
    path.write_bytes((INTER_HEADER + ROWS).encode())
    return path


@pytest.mark.parametrize("make,words", [
    (_truncated, ["inter.tsv.gz", "truncated .gz", "copy or download it again"]),
    (_corrupt, ["inter.tsv.gz", "corrupt compressed data", "CRC check failed"]),
    (_garbage_inside, ["inter.tsv.gz", "corrupt compressed data"]),
    (_not_gzip, ["inter.tsv.gz", "Not a gzipped file"]),
])
def test_damaged_gzip_is_an_error_naming_the_file(tmp_path, make, words):
    with pytest.raises(schema.SchemaError) as info:
        prepare_lib.prepare(_config(tmp_path, make(tmp_path)), log=lambda *_: None)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not os.path.exists(tmp_path / "layout")


def test_truncated_gzip_through_the_cli_has_no_traceback(tmp_path):
    inter = _truncated(tmp_path)
    (tmp_path / "items.tsv").write_text(ITEMS, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "prepare", f"--items={tmp_path / 'items.tsv'}",
         f"--interactions={inter}", f"--output={tmp_path / 'layout'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{inter}: the file ends in the middle of its compressed data" in proc.stderr
    assert "Traceback" not in proc.stderr and "EOFError" not in proc.stderr.split(":")[0]


def _giant_line_gz(path, line_bytes: int):
    """A .gz of header, 3 good rows, one line of `line_bytes` 'x' bytes, 3 good rows; written
    in chunks (the test itself must not hold the line either)."""
    good = "apple phone\tA\tclick\napples\tB\tclick\ndrill\tC\tclick\n".encode()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(INTER_HEADER.encode() + good)
        chunk = b"x" * (1 << 20)
        left = line_bytes
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
        f.write(b"\n" + good)
    return path


def test_giant_line_is_rejected_with_bounded_memory(tmp_path):
    line_bytes = 64 << 20   # 64 MiB line; a 64 KB .gz
    inter = _giant_line_gz(tmp_path / "inter.tsv.gz", line_bytes)
    assert os.path.getsize(inter) < 1 << 20
    tracemalloc.start()
    spec = prepare_lib.prepare(_config(tmp_path, inter), log=lambda *_: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * readers.MAX_LINE_BYTES, f"peak {peak:,} bytes"  # before: 2.4x the line
    rep = spec.counts["interactions"]
    assert rep["rows_read"] == 7 and rep["rows_kept"] == 6
    assert rep["rejected"] == {Reason.LINE_TOO_LONG.value: 1}
    example = rep["examples"][Reason.LINE_TOO_LONG.value][0]
    assert f":5: the line is {line_bytes + 1:,} bytes" in example, example


def test_bomb_line_beyond_the_skip_limit_stops_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_SKIP_BYTES", 32 << 20)
    inter = _giant_line_gz(tmp_path / "inter.tsv.gz", 48 << 20)
    with pytest.raises(schema.SchemaError, match=r"inter.tsv.gz:5: the line is longer than "
                                                 r"33,554,432 bytes; this is not a TSV/CSV"):
        prepare_lib.prepare(_config(tmp_path, inter), log=lambda *_: None)


def test_long_tsv_cell_is_line_too_long_not_quoting(tmp_path):
    inter = tmp_path / "inter.tsv"
    inter.write_text(INTER_HEADER + "apple\tA\tclick\n" + "q" * (2 << 20) + "\tB\tclick\n",
                     encoding="utf-8")
    spec = prepare_lib.prepare(_config(tmp_path, inter), log=lambda *_: None)
    assert spec.counts["interactions"]["rejected"] == {Reason.LINE_TOO_LONG.value: 1}


def test_crlf_and_bom_are_read_like_lf(tmp_path):
    items = tmp_path / "items.csv"
    items.write_bytes(b"\xef\xbb\xbf" + ITEMS.replace("\t", ",").replace("\n", "\r\n").encode())
    inter = tmp_path / "inter.tsv"
    inter.write_bytes(b"\xef\xbb\xbf" + (INTER_HEADER + "".join(ROWS.splitlines(True)[:3])).replace("\n", "\r\n").encode())
    spec = prepare_lib.prepare(_config(tmp_path, inter, items=items), log=lambda *_: None)
    assert layout_lib.load_item_ids(spec) == ["A", "B", "C"]
    assert layout_lib.load_item_table(spec).titles[0] == "Apple iPhone 15"
    assert sorted(layout_lib.load_queries(spec)) == ["apple phone", "apples", "drill"]
    assert spec.counts["interactions"]["rows_rejected"] == 0


@pytest.fixture()
def small_layout(tmp_path):
    inter = tmp_path / "inter.tsv"
    inter.write_text(INTER_HEADER + ROWS, encoding="utf-8")
    spec = prepare_lib.prepare(_config(tmp_path, inter), log=lambda *_: None)
    layout_lib.verify_record_files(spec)  # whole: no error
    return spec


def _cut(path, keep_records):
    with open(path, "r+b") as f:
        f.truncate(layout_lib.RECORD_HEADER_BYTES + keep_records * layout_lib.RECORD_DTYPE.itemsize)


def test_record_file_cut_at_a_record_boundary_is_refused(small_layout):
    spec = small_layout
    rel = spec.record_files["train"][0]
    assert spec.record_checks[rel]["records"] == 100
    _cut(spec.path(rel), 40)
    with pytest.raises(ValueError, match=r"header counts 100 records but the file holds 40\.00"):
        layout_lib.verify_record_files(spec)


def test_record_file_with_a_rewritten_header_is_refused_by_its_checksum(small_layout):
    spec = small_layout
    rel = spec.record_files["eval"][0]
    path = spec.path(rel)
    _cut(path, 10)
    with open(path, "r+b") as f:  # a consistent header for the cut file
        f.write(layout_lib.record_header(10))
    with pytest.raises(ValueError, match="layout.json expects"):
        layout_lib.verify_record_files(spec)


def test_record_file_bytes_flipped_are_refused(small_layout):
    spec = small_layout
    path = spec.path(spec.record_files["train"][-1])
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="changed or damaged after prepare"):
        layout_lib.verify_record_files(spec)


def test_training_refuses_a_cut_layout_before_it_starts(small_layout, tmp_path):
    from dpsr_tf.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training import driver  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    spec = small_layout
    _cut(spec.path(spec.record_files["train"][0]), 40)
    os.environ.pop("TF_CONFIG", None)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(tmp_path / "model"),
                        batch_size=8, train_steps=1)
    with pytest.raises(ValueError, match="it was cut or damaged"):
        driver.train_and_evaluate(ModelConfig(), train)
    assert not os.path.exists(tmp_path / "model" / "checkpoint")


def test_control_characters_in_titles_and_queries_are_rejected_rows(tmp_path):
    """A NUL (or another control character) in a title or query is a rejected row with its
    file:line, column, escaped value and fix; items whose title is rejected are then unknown
    items with that reason, and the counts add up. Before, the NUL went into the layout."""
    items = tmp_path / "items.csv"  # CSV: a tab inside a title is text (made a space)
    items.write_text("item_id,title\nA,Apple iPhone 15\nB,Fresh\x00apples 1kg\n"
                     "C,Cordless\x0cdrill 20V\nD,Tab\tseparated\n", encoding="utf-8")
    inter = tmp_path / "inter.tsv"
    inter.write_text(INTER_HEADER + "apple phone\tA\tclick\napple\x00phone\tA\tclick\n"
                     "drill\tC\tclick\nphone\x1b[0m\tA\tclick\nfresh apples\tD\tclick\n",
                     encoding="utf-8")
    spec = prepare_lib.prepare(_config(tmp_path, inter, items=items), log=lambda *_: None)
    control = Reason.CONTROL_CHARACTER.value
    item_report, inter_report = spec.counts["items"], spec.counts["interactions"]
    assert (item_report["rows_read"], item_report["rows_kept"]) == (4, 2)
    assert item_report["rejected"] == {control: 2}
    assert item_report["examples"][control] == [
        f"{items}:3: item_id 'B': the title 'Fresh\\x00apples 1kg' has the control character "
        "U+0000 at character 6; remove control characters from the text (a binary or wrongly "
        "decoded export?)",
        f"{items}:4: item_id 'C': the title 'Cordless\\x0cdrill 20V' has the control character "
        "U+000C at character 9; remove control characters from the text (a binary or wrongly "
        "decoded export?)"]
    assert (inter_report["rows_read"], inter_report["rows_kept"]) == (5, 2)
    assert inter_report["rejected"] == {control: 2, Reason.UNKNOWN_ITEM.value: 1}
    examples = inter_report["examples"]
    assert examples[control][0].startswith(
        f"{inter}:3: the query 'apple\\x00phone' has the control character U+0000 at character 6")
    assert examples[control][1].startswith(f"{inter}:5: the query 'phone\\x1b[0m' has the "
                                           "control character U+001B at character 6")
    assert examples[Reason.UNKNOWN_ITEM.value] == [
        f"{inter}:4: item_id 'C' is not in the items file (its row was rejected: {items}:4 "
        "(control character in the title))"]
    assert layout_lib.load_item_ids(spec) == ["A", "D"]
    assert layout_lib.load_item_table(spec).titles == ["Apple iPhone 15", "Tab separated"]
    assert sorted(layout_lib.load_queries(spec)) == ["apple phone", "fresh apples"]
