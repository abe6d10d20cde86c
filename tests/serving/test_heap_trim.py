"""heap_trim.HeapTrimmer: when it trims (a count of calls against a scripted resident size),
and that a trim gives freed heap pages back (a fresh interpreter whose freed small buffers
glibc keeps resident until malloc_trim)."""
import platform
import subprocess
import sys
import textwrap

import pytest

from dpsr_tf.serving import heap_trim
from dpsr_tf.serving.heap_trim import HeapTrimmer

MIB = 1 << 20


class _Scripted:
    """A resident size read from a list, and a trim that records when it ran and drops the
    size to `after_trim`."""

    def __init__(self, sizes, after_trim):
        self.sizes = list(sizes)
        self.after_trim = after_trim
        self.trimmed_at = []
        self.current = None

    def rss(self):
        if self.sizes:
            self.current = self.sizes.pop(0)
        return self.current

    def trim(self):
        self.trimmed_at.append(self.current)
        self.sizes.insert(0, self.after_trim)
        return 1


def test_trims_only_after_growth_and_counts_from_the_lowest_size_seen():
    # mark 100 at start; 110 (< +16) no; 90 lowers the mark; 105 = 90 + 15 no; 106 = +16 trims
    # (size after: 95, the new mark); 110 no; 111 trims.
    script = _Scripted([100 * MIB, 110 * MIB, 90 * MIB, 105 * MIB, 106 * MIB, 110 * MIB,
                        111 * MIB], after_trim=95 * MIB)
    trimmer = HeapTrimmer(min_growth_bytes=16 * MIB, trim=script.trim, rss=script.rss)
    done = [trimmer.check() for _ in range(6)]
    assert done == [False, False, False, True, False, True]
    assert script.trimmed_at == [106 * MIB, 111 * MIB]
    assert trimmer.trims == 2
    assert trimmer.released_bytes == (106 - 95 + 111 - 95) * MIB


def test_without_a_trim_function_it_never_trims_or_starts(monkeypatch):
    monkeypatch.setattr(heap_trim, "libc_function", lambda name: None)  # a libc without it
    sizes = iter([0, 1 << 40])  # grows far past the mark: a trim were there one
    trimmer = HeapTrimmer(rss=lambda: next(sizes))
    assert not trimmer.check() and not trimmer.start() and trimmer.trims == 0


@pytest.mark.parametrize("bad", [dict(interval_seconds=0), dict(min_growth_bytes=-1)])
def test_bad_settings_are_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        HeapTrimmer(**bad)


_PROGRAM = textwrap.dedent("""
    import sys
    from dpsr_tf.serving.heap_trim import HeapTrimmer, resident_bytes
    trimmer = HeapTrimmer(min_growth_bytes=64 << 20)
    base = resident_bytes()
    # 120k buffers of 1.5 KB (malloc's heap, not pymalloc's arenas or mmap), all freed but the
    # last, which pins the heap's top so free() cannot shrink it.
    held = [bytes(1500) for _ in range(120_000)]
    last = held[-1]
    del held
    freed = resident_bytes()
    trimmed = trimmer.check() if sys.argv[1] == "trim" else False
    print(int(trimmed), (freed - base) >> 20, (resident_bytes() - base) >> 20)
""")


def _run(mode):
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                         text=True, check=True)
    trimmed, after_free, after = out.stdout.split()
    return bool(int(trimmed)), int(after_free), int(after)


def test_a_trim_returns_freed_heap_pages():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    # The freed ~180 MB stay resident without a trim: what the trimmer is for.
    trimmed, after_free, after = _run("keep")
    assert not trimmed and after_free > 150 and after > 150, (after_free, after)
    trimmed, after_free, after = _run("trim")
    assert trimmed and after_free > 150, (after_free, after)
    assert after < 20, f"{after} MiB still resident after the trim (freed: {after_free} MiB)"


def test_trims_when_the_heaps_free_bytes_grow_though_the_resident_size_does_not():
    # A burst's buffers freed after it: the resident size stays flat, the heap's free bytes
    # rise. Marks: rss 100, free 10. Free 20 (< +16) no; free 26 (+16) trims, and the free mark
    # becomes what is free after the trim (26: released pages still count as free); 30 no;
    # free falls to 5 (reused), then 21 (+16 over 5) trims.
    free = iter([10 * MIB, 20 * MIB, 26 * MIB, 26 * MIB, 30 * MIB, 5 * MIB, 21 * MIB,
                 21 * MIB])
    trims = []
    trimmer = HeapTrimmer(min_growth_bytes=16 * MIB, trim=lambda: trims.append(1),
                          rss=lambda: 100 * MIB, free_heap=lambda: next(free))
    assert [trimmer.check() for _ in range(5)] == [False, True, False, False, True]
    assert trimmer.trims == 2 and len(trims) == 2


_BURST = textwrap.dedent("""
    from dpsr_tf.serving import startup
    from dpsr_tf.serving.heap_trim import HeapTrimmer, resident_bytes
    startup.set_large_buffer_policy(trimmed=True)
    trimmer = HeapTrimmer(min_growth_bytes=16 << 20)
    base = resident_bytes()
    held = [b"x" * (8 << 20) for _ in range(10)]   # a burst of 8 MB requests, held at once
    pin = bytearray(1000)                          # a later small buffer above them
    during = trimmer.check()                       # grew: trims, but everything is in use
    del held                                       # the burst ends: the heap keeps its pages
    freed = resident_bytes()
    after = trimmer.check()
    print(int(during), int(after), (freed - base) >> 20, (resident_bytes() - base) >> 20)
""")


def test_a_bursts_buffers_freed_after_it_are_trimmed():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallinfo2 and malloc_trim are glibc's")
    out = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True,
                         check=True).stdout.split()
    during, after, freed, left = (int(v) for v in out)
    assert during and freed >= 60, out   # the freed 80 MB stayed resident, the rss flat ...
    assert after and left <= 10, out     # ... and the free bytes' growth trimmed them
