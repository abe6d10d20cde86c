"""Bounded fuzzing of the TSV/CSV readers: whatever bytes a file holds (tabs,
commas, quotes, CR/LF, BOMs, bad UTF-8, gzip streams cut anywhere), TableReader either refuses
the file with a SchemaError or yields records in line order, each kept with exactly the
header's width or rejected with a Reason. Never another exception.

FUZZ_EXAMPLES cases per property in `make test` (derandomized); bench/fuzz_bench.py runs more."""
import gzip
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from dpsr_tf.data import readers, schema

FUZZ_EXAMPLES = int(os.environ.get("DPSR_FUZZ_EXAMPLES", "150"))
# `make test`: the same cases every run; bench/fuzz_bench.py: new ones from --hypothesis-seed.
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                derandomize="DPSR_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck), database=None)
HEADERS = {".tsv": b"item_id\ttitle\tbrand\n", ".csv": b"item_id,title,brand\n"}
PIECES = hst.sampled_from([b"\t", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf",
                           b"\xff", b"\xc3", b"\xc3\xa9", b"A", b"apple", b" ", b"\x00",
                           "苹果".encode(), b"\\", b"\x1b"])
CONTENT = hst.lists(hst.one_of(PIECES, hst.binary(max_size=6)), max_size=60).map(b"".join)


def _read(path):
    """(records, error): every record of the file, or the SchemaError that stopped it."""
    records = []
    try:
        reader = readers.TableReader(path, schema.ITEMS, progress_every_s=1e9)
        width = len(reader.header)
        for record in reader:
            records.append((record, width))
    except schema.SchemaError as e:
        assert os.path.basename(path) in str(e), str(e)
        return records, e
    return records, None


def _check(records):
    last = 1
    for record, width in records:
        assert record.line > last, (record.line, last)  # in order, after the header
        last = record.line
        if record.error is None:
            assert len(record.fields) == width
        else:
            assert isinstance(record.error, schema.Reason) and record.message


@FUZZ
@given(hst.sampled_from([".tsv", ".csv"]), hst.booleans(), CONTENT)
def test_fuzz_table_text(ext, with_header, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items" + ext)
        with open(path, "wb") as f:
            f.write((HEADERS[ext] if with_header else b"") + content)
        records, _ = _read(path)
        _check(records)


@FUZZ
@given(hst.sampled_from([".tsv", ".csv"]), CONTENT, hst.floats(0.0, 1.0))
def test_fuzz_gzip_cut_anywhere(ext, content, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items" + ext + ".gz")
        blob = gzip.compress(HEADERS[ext] + content * 3)
        with open(path, "wb") as f:
            f.write(blob[:int(len(blob) * cut)])
        records, _ = _read(path)
        _check(records)
