"""Where glibc puts large buffers (startup.set_large_buffer_policy), in fresh interpreters:
- glibc's default (the reference): a 30 MB bytes object made and freed four times stays
  resident (its threshold rises to the freed size and the heap keeps the buffer), which is how
  refused 30 MB requests grew the server;
- without a heap trimmer: each gets pages of its own (mallinfo2's mmapped bytes grow by it
  while it lives), unmapped when freed, so the resident size is back where it was at once;
- with a heap trimmer: it comes from the heap (the mmapped bytes do not grow), where the next
  buffer may reuse its pages, and the trimmer gives them back."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent("""
    import os, sys
    from dpsr_tf.serving import heap_trim, startup
    mode = sys.argv[1]
    set_ = (startup.set_large_buffer_policy(trimmed=mode == "trimmed")
            if mode != "default" else False)
    info = heap_trim.libc_function("mallinfo2")
    info.restype = heap_trim._MallInfo2
    base, mapped = heap_trim.resident_bytes(), info().hblkhd
    for _ in range(4):
        buffer = b"x" * (30 << 20)
        mapped_by_it = info().hblkhd - mapped
        del buffer
    print(int(set_), (heap_trim.resident_bytes() - base) >> 20, mapped_by_it >> 20)
""")


def _run(mode, env=None):
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                         text=True, check=True, env=env)
    was_set, kept, mapped = (int(v) for v in out.stdout.split())
    return bool(was_set), kept, mapped


@pytest.fixture
def no_operator_threshold(monkeypatch):
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)


def test_glibc_alone_keeps_a_freed_large_buffer(no_operator_threshold):
    assert _run("default")[1] >= 25


def test_without_a_trimmer_large_buffers_get_pages_of_their_own(no_operator_threshold):
    was_set, kept, mapped = _run("untrimmed")
    assert was_set and mapped >= 30 and kept <= 2


def test_with_a_trimmer_large_buffers_come_from_the_heap(no_operator_threshold):
    was_set, _, mapped = _run("trimmed")
    assert was_set and mapped == 0


def test_an_operators_own_threshold_is_left_alone(no_operator_threshold):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(16 << 20))
    assert _run("trimmed", env)[0] is False   # glibc applies the operator's value
    assert _run("untrimmed", env)[0] is False


@pytest.mark.parametrize("interval, has_trim, trimmed", [
    (0.5, True, True), (0, True, False), (0.5, False, False)])
def test_buffers_come_from_the_heap_only_where_a_trimmer_runs(monkeypatch, interval, has_trim,
                                                              trimmed):
    from dpsr_tf.serving import heap_trim, startup  # pylint: disable=import-outside-toplevel
    chosen = []
    monkeypatch.setattr(startup, "set_large_buffer_policy", lambda trimmed: chosen.append(trimmed))
    if not has_trim:  # a libc without malloc_trim: no trimmer can start
        monkeypatch.setattr(heap_trim, "glibc_malloc_trim", lambda: None)
    trimmer = startup.start_heap_trimmer(interval)
    try:
        assert chosen == [trimmed] and (trimmer is not None) == trimmed
    finally:
        if trimmer is not None:
            trimmer.stop()
