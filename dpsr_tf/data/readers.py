"""Readers of the three input files: TSV or CSV with a header, optionally gzip-compressed.

A reader yields (line_number, fields) per record and never raises on a bad row: bad UTF-8,
malformed quoting and lines over MAX_LINE_BYTES are reported through `Record.error` so the
caller can reject the row with its file:line. A file that cannot be read at all (missing, empty,
malformed header) or is damaged (a truncated or corrupt .gz, a line over MAX_SKIP_BYTES) raises
SchemaError naming the file and the last line read.

Memory is bounded whatever the input: lines are read with a length limit, so a 1 GiB line (a
1 MB .gz can hold one) is skipped in chunks, never held whole.
"""
import csv
import dataclasses
import glob
import gzip
import io
import os
import sys
import time
import zlib
from typing import Iterator, List, Optional, Sequence

from dpsr_tf.data import schema

# Text cells can be long (product descriptions); a cell above this is a quoting error.
_FIELD_LIMIT = 1 << 20
csv.field_size_limit(_FIELD_LIMIT)
# A CSV record spanning more lines than this is treated as an unterminated quote.
_MAX_RECORD_LINES = 64
# A line longer than this is rejected (LINE_TOO_LONG) without being held in memory: it is read
# in chunks up to its end and dropped.
MAX_LINE_BYTES = 8 << 20
# A line longer than this stops the file: it is not a table (e.g. a decompression bomb).
MAX_SKIP_BYTES = 256 << 20
_CHUNK = 1 << 20


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
    """Decoded lines of a binary stream; remembers which physical lines had bad UTF-8 and which
    were too long (those are yielded as a bare newline)."""

    def __init__(self, stream, path: str = ""):
        self._stream = stream
        self._path = path
        self._max_line = MAX_LINE_BYTES
        self._max_skip = MAX_SKIP_BYTES
        self.line = 0
        self.bad = {}              # line -> (byte offset, byte value)
        self.too_long = {}         # line -> its length in bytes
        self.bytes_read = 0

    def _read(self, limit: int) -> bytes:
        try:
            return self._stream.readline(limit)
        except EOFError as e:      # gzip: the stream ends before its end-of-stream marker
            raise schema.SchemaError(
                f"{self._path}: the file ends in the middle of its compressed data after line "
                f"{self.line} (a truncated .gz: {e}); copy or download it again") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as e:
            raise schema.SchemaError(
                f"{self._path}: corrupt compressed data after line {self.line} ({e}); the file "
                f"is damaged: copy or download it again (gzip -t {os.path.basename(self._path)} "
                f"checks it)") from None

    def _skip_rest(self, length: int) -> int:
        """Reads the rest of an over-long line in chunks; returns the line's total length."""
        while True:
            chunk = self._read(_CHUNK)
            length += len(chunk)
            self.bytes_read += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return length
            if length > self._max_skip:
                raise schema.SchemaError(
                    f"{self._path}:{self.line}: the line is longer than "
                    f"{self._max_skip:,} bytes; this is not a TSV/CSV table (a compressed "
                    f"bomb, or a file without line breaks?)")

    def __iter__(self):
        limit = self._max_line + 1
        while True:
            raw = self._read(limit)
            if not raw:
                return
            self.line += 1
            self.bytes_read += len(raw)
            if len(raw) == limit and not raw.endswith(b"\n"):
                self.too_long[self.line] = self._skip_rest(len(raw))
                yield "\n"
                continue
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
        self._lines = _Lines(self._stream, path)
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
        if 1 in self._lines.too_long:
            raise schema.SchemaError(f"{path}:1: the header line is {self._lines.too_long[1]:,} "
                                     f"bytes long; the first line must be a header naming the "
                                     f"columns")
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
                    if self.delimiter == "\t":  # no quoting in TSV: a cell over the limit
                        yield Record(start, [], schema.Reason.LINE_TOO_LONG,
                                     f"a cell is over {_FIELD_LIMIT >> 20} MiB ({e})")
                    else:
                        yield Record(start, [], schema.Reason.BAD_QUOTING,
                                     f"{e} (lines {start}-{prev_end})")
                    continue
                start, end = prev_end + 1, lines.line
                prev_end = end
                rows += 1
                if rows % 65536 == 0:
                    self._progress.update(rows, lines.bytes_read)
                if lines.too_long and any(n in lines.too_long for n in range(start, end + 1)):
                    line = next(n for n in range(start, end + 1) if n in lines.too_long)
                    yield Record(line, [], schema.Reason.LINE_TOO_LONG,
                                 f"the line is {lines.too_long[line]:,} bytes; the limit is "
                                 f"{MAX_LINE_BYTES >> 20} MiB (a missing line break?)")
                    continue
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


def input_files(pattern: str, kind: str) -> List[str]:
    """The files of an input: the path itself, or the sorted matches of a glob
    (`interactions-*.tsv.gz`). Their order is the row order (file index, line).

    Raises:
      SchemaError: nothing matches.
    """
    if os.path.isfile(pattern) or not glob.has_magic(pattern):
        return [pattern]
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise schema.SchemaError(f"{pattern}: no file matches (the {kind} file pattern)")
    return files


class ShardedReader:
    """The records of an input that may be several files with one header (a glob).

    `header`, `feature_columns` and `column` are those of the first file; every other file must
    have the same header. Iterating yields (file index, path, Record).

    Raises:
      SchemaError: as TableReader, or a file whose header differs from the first's.
    """

    def __init__(self, pattern: str, file_schema: schema.FileSchema,
                 progress_every_s: float = 5.0):
        self.files = input_files(pattern, file_schema.kind)
        self.schema = file_schema
        self._progress_every_s = progress_every_s
        first = TableReader(self.files[0], file_schema, progress_every_s)
        self._first = first
        self.header = first.header
        self.feature_columns = first.feature_columns

    def column(self, name: str) -> int:
        """Index of a column, or -1 when absent."""
        return self.header.index(name) if name in self.header else -1

    def close(self) -> None:
        if self._first is not None:
            self._first.close()

    def open(self, index: int) -> TableReader:
        """The reader of file `index`, its header checked against the first file's."""
        if index == 0 and self._first is not None:
            reader, self._first = self._first, None
            return reader
        reader = TableReader(self.files[index], self.schema, self._progress_every_s)
        if reader.header != self.header:
            reader.close()
            raise schema.SchemaError(
                f"{self.files[index]}:1: header {reader.header!r} differs from the first "
                f"file's {self.header!r} ({self.files[0]}); the files of one input share a "
                f"header")
        return reader

    def __iter__(self):
        for index, path in enumerate(self.files):
            for rec in self.open(index):
                yield index, path, rec


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
