"""Bulk rows between pipeline stages as partitioned files, never as Beam PCollections.

A map task writes its rows into P partition files (`<base>/<name>/<partition>/<task>.pkl`); a
reduce task reads one partition from every map task. Every path goes through Beam's
`FileSystems`, so `base` may be a local directory, gs://, hdfs:// or s3://. A file is a sequence
of pickled lists (chunks of at most CHUNK_ROWS rows), so a writer holds one chunk per open
partition and a reader one chunk at a time.

Re-running a task rewrites the same file names, so a retried bundle leaves no duplicates.

Layout tables leave the pipeline as *pieces* (`<base>/pieces/<table>/<piece>.pkl`): a dense piece
holds consecutive rows (the table is the pieces concatenated in name order); a sparse piece
holds (row, value) pairs of any rows.
"""
import pickle
import zlib
from typing import Dict, Iterator, List

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

CHUNK_ROWS = 4096
PIECES = "pieces"
_RAW = CompressionTypes.UNCOMPRESSED


def hash_partition(key: str, partitions: int) -> int:
    """The partition of a string key: the same in every process (crc32, not Python's hash)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def part_name(partition: int) -> str:
    return f"{partition:05d}"


def _create(path: str):
    return FileSystems.create(path, mime_type="application/octet-stream",
                              compression_type=_RAW)


def _open(path: str):
    return FileSystems.open(path, mime_type="application/octet-stream", compression_type=_RAW)


class PartitionWriter:
    """Rows of one map task, written into the partitions of one named intermediate.

    Files are opened on a partition's first row, so empty partitions leave no file.
    `counts` ({partition name: rows}) is what the reduce side plans with.
    """

    def __init__(self, base: str, name: str, task: str):
        self._dir = FileSystems.join(base, name)
        self._task = task
        self._buffers: Dict[str, list] = {}
        self._files: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}

    def write(self, partition: str, row) -> None:
        buf = self._buffers.get(partition)
        if buf is None:
            buf = self._buffers[partition] = []
        buf.append(row)
        if len(buf) >= CHUNK_ROWS:
            self._flush(partition)

    def _flush(self, partition: str) -> None:
        buf = self._buffers[partition]
        if not buf:
            return
        f = self._files.get(partition)
        if f is None:
            f = self._files[partition] = _create(
                FileSystems.join(self._dir, partition, f"{self._task}.pkl"))
        f.write(pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL))
        self.counts[partition] = self.counts.get(partition, 0) + len(buf)
        self._buffers[partition] = []

    def close(self) -> Dict[str, int]:
        """Flushes and closes every file; returns the rows written per partition."""
        for partition in list(self._buffers):
            self._flush(partition)
        for f in self._files.values():
            f.close()
        self._files.clear()
        return dict(self.counts)


def _chunks(path: str) -> Iterator[list]:
    with _open(path) as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _matches(pattern: str) -> List[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def read_partition(base: str, name: str, partition: str) -> Iterator:
    """Every row written to one partition of an intermediate, task files in name order."""
    for path in _matches(FileSystems.join(base, name, partition, "*.pkl")):
        for chunk in _chunks(path):
            yield from chunk


def write_piece(base: str, table: str, piece: str, value) -> None:
    """One piece of a layout table (a list or array of rows, or (row, value) pairs)."""
    with _create(FileSystems.join(base, PIECES, table, f"{piece}.pkl")) as f:
        f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def read_piece(base: str, table: str, piece: str, default=None):
    path = FileSystems.join(base, PIECES, table, f"{piece}.pkl")
    if not FileSystems.exists(path):
        return default
    with _open(path) as f:
        return pickle.load(f)


def iter_pieces(base: str, table: str) -> Iterator:
    """The pieces of a table in name order (the row order of a dense table)."""
    for path in _matches(FileSystems.join(base, PIECES, table, "*.pkl")):
        with _open(path) as f:
            yield pickle.load(f)
