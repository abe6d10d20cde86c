"""The fastest session runs seen, per key and size: a lower bound of how long a run takes.

A session run cannot be stopped in the middle, so a request whose time left is shorter than any run
of its size could take is answered late whatever happens; running it only takes the cores from
requests that can still be answered (a burst of large requests with short deadlines ran batches
whose every answer came late: docs/benchmarks.md, "Misbehaving clients"). The batch scheduler and
the unbatched run queue answer such a request DEADLINE_EXCEEDED unrun (TF Serving runs it).

Per key (a servable version and what its run computes), the fastest run of each power-of-two
class of rows is kept with its rows. A run of more rows takes no less time, so the bound for a
request of r rows is the slowest of the kept runs that had at most r rows: a request dropped by
it would have been late unless its run were faster than every run of its size seen so far.
"""
import collections
import threading
from typing import Hashable, Optional

# Keys whose runs are kept (the least recently run forgotten first).
MAX_KEYS = 1024


class FastestRuns:
    """Thread-safe record of the fastest run per (key, size class)."""

    def __init__(self, max_keys: int = MAX_KEYS):
        self._max_keys = max_keys
        self._runs = collections.OrderedDict()  # key -> {size class: (rows, seconds)}
        self._lock = threading.Lock()

    def record(self, key: Hashable, rows: int, seconds: float) -> None:
        """A run of `rows` rows of `key` took `seconds`."""
        size_class = max(1, rows).bit_length()
        with self._lock:
            runs = self._runs.pop(key, None) or {}
            best = runs.get(size_class)
            if best is None or seconds < best[1]:
                runs[size_class] = (rows, seconds)
            self._runs[key] = runs
            while len(self._runs) > self._max_keys:
                self._runs.popitem(last=False)

    def least_seconds(self, key: Hashable, rows: int) -> Optional[float]:
        """A lower bound of a run of `rows` rows of `key` (None: no run that small seen)."""
        with self._lock:
            runs = self._runs.get(key)
            seconds = [s for r, s in runs.values() if r <= rows] if runs else ()
        return max(seconds) if seconds else None

    def cannot_finish(self, key: Hashable, rows: int, left_seconds: float) -> Optional[str]:
        """The DEADLINE_EXCEEDED message for a request of `rows` rows of `key` with
        `left_seconds` left when a run of its size has always taken longer, else None."""
        least = self.least_seconds(key, rows)
        if least is None or left_seconds >= least:
            return None
        return (f"deadline exceeded: {left_seconds * 1e3:.1f} ms left, and a run of {rows} rows "
                f"has taken at least {least * 1e3:.1f} ms on this model; not run")
