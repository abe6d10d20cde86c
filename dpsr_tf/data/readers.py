"""Readers of the three input files: TSV or CSV with a header, optionally gzip-compressed.

A reader yields (line_number, fields) per record and never raises on a bad row: bad UTF-8 and
malformed quoting are reported through `Record.error` so the caller can reject the row with its
file:line. Only a file that cannot be read at all (missing, empty, malformed header) raises
SchemaError.
"""
import csv
import dataclasses
import gzip
import io
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence

from dpsr_tf.data import schema

# Text cells can be long (product descriptions); a cell above this is a quoting error.
_FIELD_LIMIT = 1 << 20
csv.field_size_limit(_FIELD_LIMIT)
# A CSV record spanning more lines than this is treated as an unterminated quote.
_MAX_RECORD_LINES = 64


def delimiter_for(path: str) -> str:
    """',' for .csv, tab for .tsv/.tab/.txt (also behind .gz)."""
    name = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(name)[1].lower()
    if ext == ".csv":
        return ","
    if ext in (".tsv", ".tab", ".txt", ""):
        return "\t"
    raise schema.SchemaError(
        f"{path}: unknown file type {ext!r}; use .tsv (tab-separated) or .csv (comma-separated), "
        f"optionally .gz; Parquet is not supported (no pyarrow in the pinned stack)")


@dataclasses.dataclass
class Record:
    line: int                      # 1-based line where the record starts
    fields: List[str]
    error: Optional[schema.Reason] = None
    message: str = ""


class _Lines:
    """Decoded lines of a binary stream; remembers which physical lines had bad UTF-8."""

    def __init__(self, stream):
        self._stream = stream
        self.line = 0
        self.bad = {}              # line -> (byte offset, byte value)
        self.bytes_read = 0

    def __iter__(self):
        for raw in self._stream:
            self.line += 1
            self.bytes_read += len(raw)
            if self.line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.bad[self.line] = (e.start, raw[e.start])
                yield raw.decode("utf-8", "replace")


class Progress:
    """Prints `<label>: N rows (r rows/s)` to stderr every `every_s` seconds."""

    def __init__(self, label: str, every_s: float = 5.0, total_bytes: int = 0, stream=None):
        self._label = label
        self._every = every_s
        self._total = total_bytes
        self._start = self._last = time.monotonic()
        self._stream = stream or sys.stderr

    def update(self, rows: int, bytes_read: int = 0) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        rate = rows / max(now - self._start, 1e-9)
        pct = f", {100.0 * bytes_read / self._total:.0f}%" if self._total and bytes_read else ""
        print(f"  {self._label}: {rows:,} rows ({rate:,.0f} rows/s{pct})", file=self._stream,
              flush=True)


def _open_binary(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


class TableReader:
    """Iterates the records of one input file after validating its header.

    Example:
      reader = TableReader("items.tsv", schema.ITEMS)
      for record in reader:            # Record(line, fields, error)
        ...
      reader.header -> ["item_id", "title", "brand"]; reader.column("title") -> 1

    Raises:
      SchemaError: the file is missing, empty, or its header is malformed / lacks a required
        column.
    """

    def __init__(self, path: str, file_schema: schema.FileSchema, progress_every_s: float = 5.0):
        if not os.path.isfile(path):
            raise schema.SchemaError(f"{path}: no such file (the {file_schema.kind} file)")
        self.path = path
        self.schema = file_schema
        self.delimiter = delimiter_for(path)
        self._stream = _open_binary(path)
        self._lines = _Lines(self._stream)
        if self.delimiter == "\t":
            self._csv = csv.reader(self._lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            self._csv = csv.reader(self._lines, delimiter=",", quotechar='"', doublequote=True)
        try:
            header = next(self._csv)
        except StopIteration:
            raise schema.SchemaError(
                f"{path}:1: empty file; the first line must be a header naming the columns, "
                f"e.g. {', '.join(file_schema.required)}") from None
        except (csv.Error, gzip.BadGzipFile, OSError) as e:
            raise schema.SchemaError(f"{path}:1: cannot read the header: {e}") from None
        if 1 in self._lines.bad:
            raise schema.SchemaError(f"{path}:1: the header is not valid UTF-8; save the file "
                                     f"as UTF-8 (the converters do that for you)")
        self.header = [h.strip() for h in header]
        self.feature_columns = schema.check_header(self.header, file_schema, path)
        size = os.path.getsize(path)
        self._progress = Progress(os.path.basename(path), progress_every_s,
                                  0 if path.endswith(".gz") else size)

    def column(self, name: str) -> int:
        """Index of a column, or -1 when absent."""
        return self.header.index(name) if name in self.header else -1

    def close(self) -> None:
        self._stream.close()

    def __iter__(self) -> Iterator[Record]:
        width = len(self.header)
        lines = self._lines
        bad = lines.bad
        prev_end = lines.line
        rows = 0
        try:
            while True:
                try:
                    fields = next(self._csv)
                except StopIteration:
                    break
                except csv.Error as e:
                    start = prev_end + 1
                    prev_end = lines.line
                    rows += 1
                    yield Record(start, [], schema.Reason.BAD_QUOTING,
                                 f"{e} (lines {start}-{prev_end})")
                    continue
                start, end = prev_end + 1, lines.line
                prev_end = end
                rows += 1
                if rows % 65536 == 0:
                    self._progress.update(rows, lines.bytes_read)
                if bad and any(n in bad for n in range(start, end + 1)):
                    line = next(n for n in range(start, end + 1) if n in bad)
                    offset, byte = bad[line]
                    yield Record(line, fields, schema.Reason.BAD_UTF8,
                                 f"invalid UTF-8 byte 0x{byte:02x} at byte {offset + 1} of the "
                                 f"line; save the file as UTF-8")
                    continue
                if not fields or (len(fields) == 1 and not fields[0].strip() and width > 1):
                    yield Record(start, fields, schema.Reason.BLANK_LINE, "blank line")
                    continue
                if end - start + 1 > _MAX_RECORD_LINES:
                    yield Record(start, [], schema.Reason.BAD_QUOTING,
                                 f"record spans lines {start}-{end}: an unterminated quote?")
                    continue
                if len(fields) != width:
                    yield Record(start, fields, schema.Reason.FIELD_COUNT,
                                 f"{len(fields)} fields, the header has {width} "
                                 f"({_field_hint(self.delimiter, fields, width)})")
                    continue
                yield Record(start, fields)
        finally:
            self.close()


def _field_hint(delimiter: str, fields: Sequence[str], width: int) -> str:
    if delimiter == "\t" and len(fields) > width:
        return "a tab inside a value? TSV has no quoting"
    if delimiter == "," and len(fields) > width:
        return "a comma inside a value? quote it: \"a, b\""
    return "a missing value? keep the delimiter for empty cells"


def write_table(path: str, header: Sequence[str], rows, delimiter: Optional[str] = None) -> int:
    """Writes a header and rows (sequences of str) as UTF-8 TSV/CSV; returns the row count.

    TSV cells must not contain tabs or line breaks (schema.clean_text removes them).
    """
    delimiter = delimiter or delimiter_for(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    count = 0
    opener = gzip.open if path.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8", newline="") as f:
        if delimiter == "\t":
            f.write("\t".join(header) + "\n")
            for row in rows:
                f.write("\t".join(row) + "\n")
                count += 1
        else:
            writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
    os.replace(tmp, path)
    return count


def read_text_lines(path: str) -> List[str]:
    """Lines of a UTF-8 text file without their newline (the layout's *.txt tables)."""
    with io.open(path, encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]
