"""Global row numbers without a global sort: first appearances of keys, and record order.

The single process numbers queries (and, without a users file, users) by first appearance in
file order, and writes records in one global order. Here:
  first_positions  one hash partition of (key, position, ...) rows -> each key's smallest
                   position, written by position range, counted per range
  rank_keys        one position range: rows = the range's offset (the counts of the ranges
                   before it, from the metadata) + rank by position -> the key table's piece
                   and (key, row) by hash of the key
  rank_records     one range of (sort key, record bytes) -> the records in sort-key order, a
                   piece of the split's record stream
"""
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import meta as meta_lib
from dpsr_tf.data.beam.job import Job


def first_positions(job: Job, source: str, name: str, part: str) -> dict:
    """Rows (key, position, ...) of `source` partition `part` -> `<name>_first` by range."""
    first = {}
    for row in files_lib.read_partition(job.base, source, part):
        key, pos = row[0], row[1]
        if pos < first.get(key, pos + 1):
            first[key] = pos
    writer = files_lib.PartitionWriter(job.base, f"{name}_first", part)
    for key, pos in first.items():
        writer.write(job.pos_range(pos), (pos, key))
    out = {}
    meta_lib.add_counts(out, f"c/{name}_first", writer.close())
    return out


def rank_keys(job: Job, ctx, meta: dict, name: str, rng: str, tokenize: bool) -> dict:
    """One position range of first appearances -> piece `<name>_ids` (keys in row order),
    `<name>_tokens` when `tokenize`, and `<name>_rows` (key, row) by hash of the key."""
    _, starts, _ = meta_lib.offsets(meta, f"c/{name}_first")
    start = starts[rng]
    keys = [key for _, key in sorted(files_lib.read_partition(job.base, f"{name}_first", rng))]
    files_lib.write_piece(job.base, f"{name}_ids", rng, keys)
    if tokenize:
        files_lib.write_piece(job.base, f"{name}_tokens", rng, ctx.tokenize(keys))
    rows = files_lib.PartitionWriter(job.base, f"{name}_rows", rng)
    for local, key in enumerate(keys):
        rows.write(job.key_part(key), (key, start + local))
    rows.close()
    return {}


def rank_records(job: Job, split: str, rng: str) -> dict:
    """One range of `records_<split>` (sort key, bytes) -> its piece, sorted by the key."""
    rows = sorted(files_lib.read_partition(job.base, f"records_{split}", rng),
                  key=lambda r: r[0])
    files_lib.write_piece(job.base, f"records_{split}", rng, b"".join(r[1] for r in rows))
    return {}


def load_map(job: Job, name: str, part: str) -> dict:
    """{key: row} of one hash partition of `<name>_rows`."""
    return dict(files_lib.read_partition(job.base, f"{name}_rows", part))

