"""Bounded per-node counters: the top `capacity` neighbours of every source node by count.

Click counts arrive in chunks of (source, neighbour, count). Each merge aggregates the chunk with
what is kept, then keeps at most `capacity` neighbours per source, the largest counts (ties: the
smaller neighbour id). Memory is O(sources * capacity + chunk), never O(distinct edges). The
kept counts are exact for every source with at most `capacity` distinct neighbours; above it a
neighbour dropped at one merge restarts from zero if it comes back (a truncated, Misra-Gries
style summary), so choose capacity a few times the top-N that is read out.
"""
import numpy as np


def top_per_source(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, k: int):
    """The k largest weights per source.

    Args:
      src, dst: int64 [E]; weight: float [E] (one entry per (src, dst), already aggregated).
      k: entries kept per source.

    Returns:
      (src, dst, weight) of the kept entries, sorted by src, then weight descending, then dst.
    """
    order = np.lexsort((dst, -weight, src))
    src, dst, weight = src[order], dst[order], weight[order]
    if len(src) == 0:
        return src, dst, weight
    starts = np.r_[0, np.flatnonzero(np.diff(src)) + 1]
    rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    keep = rank < k
    return src[keep], dst[keep], weight[keep]


def aggregate(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, dst_space: int):
    """Sums the weights of equal (src, dst) pairs; dst must lie in [0, dst_space)."""
    key = src.astype(np.int64) * int(dst_space) + dst.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    sums = np.bincount(inverse, weights=weight, minlength=len(uniq))
    return uniq // dst_space, uniq % dst_space, sums


class TopNeighbours:
    """A bounded summary of per-source neighbour counts (see the module docstring).

    Args:
      dst_space: neighbour ids lie in [0, dst_space).
      capacity: neighbours kept per source between merges.
    """

    def __init__(self, dst_space: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.dst_space = int(max(1, dst_space))
        self.capacity = int(capacity)
        self.src = np.zeros([0], np.int64)
        self.dst = np.zeros([0], np.int64)
        self.count = np.zeros([0], np.float64)

    def add(self, src: np.ndarray, dst: np.ndarray, count: np.ndarray) -> None:
        """Adds a chunk of (src, dst, count) entries (pairs may repeat)."""
        s, d, c = aggregate(np.r_[self.src, src], np.r_[self.dst, dst],
                            np.r_[self.count, np.asarray(count, np.float64)], self.dst_space)
        self.src, self.dst, self.count = top_per_source(s, d, c, self.capacity)

    def top(self, num_sources: int, k: int):
        """[num_sources, k] neighbour ids (-1 = none) and [num_sources, k] float32 counts."""
        s, d, c = top_per_source(self.src, self.dst, self.count, k)
        return rows_to_matrix(s, d, c, num_sources, k)


def rows_to_matrix(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, num_rows: int, k: int):
    """Edges grouped by source, at most k per source (top_per_source's output) -> [num_rows, k]
    int64 neighbour ids (-1 = none) and [num_rows, k] float32 weights, in the given order."""
    ids = np.full([num_rows, k], -1, np.int64)
    weights = np.zeros([num_rows, k], np.float32)
    if len(src):
        starts = np.r_[0, np.flatnonzero(np.diff(src)) + 1]
        rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
        ids[src, rank] = dst
        weights[src, rank] = weight
    return ids, weights
