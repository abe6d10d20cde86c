"""Where glibc puts large buffers (startup.set_large_buffer_policy), in a fresh interpreter that
makes and frees a 30 MB bytes object four times:
- glibc's default (the reference): its threshold rises to the freed size and the heap keeps
  the buffer, which is how refused 30 MB requests grew the server;
- without a heap trimmer: each buffer gets pages of its own, unmapped when freed, so the
  resident size is back where it was at once;
- with a heap trimmer: the buffers come from the heap and each reuses the last one's pages
  (a quarter of the page faults), and a trim gives them back."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent("""
    import ctypes, os, resource, sys
    from dpsr_tf.serving import startup
    def rss():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    mode = sys.argv[1]
    set_ = (startup.set_large_buffer_policy(trimmed=mode == "trimmed")
            if mode != "default" else False)
    base, faults = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        buffer = b"x" * (30 << 20)
        del buffer
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    kept = rss() - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(int(set_), kept >> 20, faults, (rss() - base) >> 20)
""")


def _run(mode, env=None):
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                         text=True, check=True, env=env)
    was_set, kept, faults, after_trim = (int(v) for v in out.stdout.split())
    return bool(was_set), kept, faults, after_trim


@pytest.fixture(scope="module")
def glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's")


@pytest.fixture
def no_operator_threshold(glibc, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)


def test_glibc_alone_keeps_a_freed_large_buffer(no_operator_threshold):
    assert _run("default")[1] >= 25


def test_without_a_trimmer_freed_large_buffers_leave_rss_where_it_was(no_operator_threshold):
    was_set, kept, _, _ = _run("untrimmed")
    assert was_set and kept <= 2


def test_with_a_trimmer_large_buffers_reuse_pages_and_a_trim_returns_them(
        no_operator_threshold):
    _, _, own_pages_faults, _ = _run("untrimmed")
    was_set, kept, faults, after_trim = _run("trimmed")
    assert was_set
    # Four buffers with pages of their own fault four buffers' pages in; reused, about one.
    assert faults * 2 < own_pages_faults, (faults, own_pages_faults)
    assert kept >= 25          # kept for the next buffer until a trim ...
    assert after_trim <= 2     # ... which gives it back


def test_an_operators_own_threshold_is_left_alone(glibc):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(16 << 20))
    assert _run("trimmed", env)[0] is False   # glibc applies the operator's value
    assert _run("untrimmed", env)[0] is False
