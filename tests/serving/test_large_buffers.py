"""Large freed buffers go back to the system (startup.return_large_buffers_to_the_system):
in a fresh interpreter, a 30 MB bytes object made and freed four times leaves the process's
RSS where it was; without the setting glibc keeps one (its threshold rises to the freed size,
and the heap holds what it frees), which is how refused 30 MB requests grew the server."""
import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent("""
    import os, sys
    from dpsr_tf.serving import startup
    def rss():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    set_ = startup.return_large_buffers_to_the_system() if sys.argv[1] == "on" else False
    base = rss()
    for _ in range(4):
        buffer = b"x" * (30 << 20)
        del buffer
    print(int(set_), (rss() - base) >> 20)
""")


def _kept_mib(mode, env=None):
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                         text=True, check=True, env=env)
    was_set, kept = out.stdout.split()
    return bool(int(was_set)), int(kept)


@pytest.fixture(scope="module")
def glibc():
    import platform  # pylint: disable=import-outside-toplevel
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's")


def test_freed_large_buffers_leave_rss_where_it_was(glibc, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert _kept_mib("off")[1] >= 25          # the reference: glibc keeps a 30 MB buffer
    was_set, kept = _kept_mib("on")
    assert was_set and kept <= 2


def test_an_operators_own_threshold_is_left_alone(glibc):
    import os  # pylint: disable=import-outside-toplevel
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(16 << 20))
    assert _kept_mib("on", env)[0] is False   # glibc applies the operator's value
