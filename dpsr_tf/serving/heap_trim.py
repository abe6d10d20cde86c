"""Returns freed heap pages to the system while the server runs.

glibc keeps what a thread frees in its arena: the batch tensors of 1,000-row batches, answers
held for a client that never reads and then dropped, parsed requests. Only the top of an arena
is given back on its own; the rest stays resident until `malloc_trim` walks the arenas and
releases their free pages: with zero-window readers and batching on, trimming keeps the
server markedly smaller (docs/benchmarks.md, "Misbehaving clients"), and the servers let large
buffers come from the heap, for the next request to reuse, on the trimmer's promise to give
them back (startup.set_large_buffer_policy). Trimming locks each arena while it walks it, which
takes a while on a large heap, so it runs only when the resident size, or the heap's free
bytes, have grown by `min_growth_bytes` since the last trim, not on a fixed clock. The second
catches a burst's buffers freed after it, when the resident size no longer grows.
"""
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from typing import Callable, Optional

_LOG = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 0.5
DEFAULT_MIN_GROWTH_BYTES = 16 << 20


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def libc_function(name: str):
    """The C library's function `name` (a ctypes function), or None where this libc has no
    such function or cannot be loaded. Shared with startup's mallopt setting."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def glibc_free_heap_bytes() -> Optional[Callable[[], int]]:
    """The free bytes glibc's arenas hold (mallinfo2's fordblks + fsmblks: resident until a
    trim, unless a trim already released them) as a callable, or None where libc has no
    mallinfo2 (glibc before 2.33, musl, macOS)."""
    info = libc_function("mallinfo2")
    if info is None:
        return None
    info.argtypes = []
    info.restype = _MallInfo2

    def free_bytes() -> int:
        now = info()
        return now.fordblks + now.fsmblks
    return free_bytes


def glibc_malloc_trim() -> Optional[Callable[[], int]]:
    """glibc's malloc_trim(0) as a callable, or None where libc has none (musl, macOS)."""
    trim = libc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Calls `trim` whenever the resident size, or the heap's free bytes (`free_heap`), are
    `min_growth_bytes` above what they were after the last trim (or at start). A fall lowers
    that mark, so growth is counted from the lowest value seen since. `check` is one step;
    `start` runs it every `interval_seconds` on a daemon thread until `stop`."""

    def __init__(self, interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 min_growth_bytes: int = DEFAULT_MIN_GROWTH_BYTES,
                 trim: Optional[Callable[[], int]] = None,
                 rss: Callable[[], int] = resident_bytes,
                 free_heap: Optional[Callable[[], int]] = None):
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
        if min_growth_bytes < 0:
            raise ValueError(f"min_growth_bytes must be >= 0, got {min_growth_bytes}")
        self.interval_seconds = interval_seconds
        self.min_growth_bytes = min_growth_bytes
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._rss = rss
        self._mark = rss()
        self._free_heap = free_heap if free_heap is not None else (
            glibc_free_heap_bytes() or (lambda: 0))
        self._free_mark = self._free_heap()
        self.trims = 0
        self.released_bytes = 0
        self.trim_seconds = 0.0
        self.longest_trim_seconds = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        """Trims when the resident size or the heap's free bytes grew enough; True when it
        trimmed."""
        now, free = self._rss(), self._free_heap()
        if self._trim is None or (now < self._mark + self.min_growth_bytes and
                                  free < self._free_mark + self.min_growth_bytes):
            self._mark = min(self._mark, now)
            self._free_mark = min(self._free_mark, free)
            return False
        start = time.perf_counter()
        self._trim()
        took = time.perf_counter() - start
        after = self._rss()
        # Released pages still count as free: growth is counted from here.
        self._free_mark = self._free_heap()
        self.trims += 1
        self.trim_seconds += took
        self.longest_trim_seconds = max(self.longest_trim_seconds, took)
        self.released_bytes += max(0, now - after)
        self._mark = after
        return True

    def start(self) -> bool:
        """Starts the thread; False (and nothing started) where no trim function exists."""
        if self._trim is None:
            _LOG.info("no malloc_trim in this libc: freed heap pages stay with the process")
            return False
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> str:
        return (f"heap trims: {self.trims}, {self.released_bytes / 2**20:.0f} MiB released, "
                f"{self.trim_seconds:.3f} s in all (longest {self.longest_trim_seconds * 1e3:.1f} "
                f"ms)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.check()
