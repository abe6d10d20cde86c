"""REST bodies that arrive too slowly: a client trickling a large body must not hold the body
budget (http_body.BodyPace, the budget's per-peer share, the budget taken as a body's bytes
arrive rather than as its Content-Length declares). Reads are counted against a fake clock;
one end-to-end case runs a real gateway with a trickling socket beside a normal large body."""
import http.client
import io
import socket
import threading
import time
import types

import pytest

from dpsr_tf.serving.model_server.api import http_body, rest
from dpsr_tf.serving.model_server.api.predict import RequestLimits
from tests.support.trickle import FakeClock, Trickle

PACE = http_body.BodyPace(grace_seconds=10.0, min_bytes_per_second=64 << 10)


def _headers(text: str):
    return http.client.parse_headers(io.BytesIO(text.encode() + b"\r\n"))


def test_a_trickled_body_is_408_within_the_grace_and_frees_the_budget():
    """16 MiB declared, 100 KiB sent, then a byte every 5 s: cut (408) once the grace plus what
    came at the minimum rate is spent, after a bounded number of reads; meanwhile it holds
    about what it sent (not the 16 MiB it declared), and nothing after."""
    clock = FakeClock()
    raw = Trickle(b" " * (100 << 10), clock, step=5.0)
    budget = http_body.BodyBudget(16 << 20)
    reader = http_body.BodyReader(io.BufferedReader(raw), 16 << 20, budget, 0, peer="a",
                                  pace=PACE, clock=clock)
    with pytest.raises(http_body.BodyError) as e:
        reader.read(_headers(f"Content-Length: {16 << 20}\r\n"))
    assert e.value.status == 408 and "too slowly" in e.value.message
    assert 0 < budget.held <= 2 * (100 << 10) + 2 * raw.reads  # what came, not what was declared
    reader.release()
    assert budget.held == 0  # ...and free once it was answered
    # 100 KiB at 64 KiB/s earns 1.6 s beyond the 10 s grace: 11.6 s, three 5 s steps.
    assert raw.reads <= 100 + 4, raw.reads


def test_a_trickled_chunk_size_line_is_408_not_read_to_its_end():
    """A chunk-size line sent a byte at a time is cut by the pace, not after 1 KiB of bytes."""
    clock = FakeClock()
    raw = Trickle(b"", clock, step=5.0, byte=b"0")
    reader = http_body.BodyReader(io.BufferedReader(raw), 1 << 20, http_body.BodyBudget(1 << 20),
                                  0, pace=PACE, clock=clock)
    with pytest.raises(http_body.BodyError) as e:
        reader.read(_headers("Transfer-Encoding: chunked\r\n"))
    assert e.value.status == 408
    assert raw.reads <= 3, raw.reads  # 10 s of grace at 5 s a byte


def test_a_body_that_never_sends_its_first_64_kib_holds_no_budget():
    clock = FakeClock()
    raw = Trickle(b" " * 1000, clock, step=5.0)
    budget = http_body.BodyBudget(16 << 20)
    reader = http_body.BodyReader(io.BufferedReader(raw), 16 << 20, budget, 0, pace=PACE,
                                  clock=clock)
    with pytest.raises(http_body.BodyError) as e:
        reader.read(_headers(f"Content-Length: {16 << 20}\r\n"))
    assert e.value.status == 408 and budget.peak_held == 0


def test_a_body_waiting_for_the_budget_is_not_late_for_it():
    """Time spent waiting for the budget does not count against the client's pace."""
    clock = FakeClock()
    body = b" " * (200 << 10)
    budget = http_body.BodyBudget(1 << 20)

    class _SlowBudget(http_body.BodyBudget):
        def acquire(self, more, already, wait_seconds, peer=None, ticket=None):
            clock.now += 60.0  # a minute in the queue, far past the grace
            return super().acquire(more, already, wait_seconds, peer, ticket)

    budget = _SlowBudget(1 << 20)
    reader = http_body.BodyReader(io.BufferedReader(io.BytesIO(body)), 1 << 20, budget, 0,
                                  pace=PACE, clock=clock)
    assert reader.read(_headers(f"Content-Length: {len(body)}\r\n")) == body


def test_a_body_sent_in_one_go_takes_its_budget_in_a_few_steps():
    """Holds grow with what arrived, doubling: a 1 MiB body is read whole, held whole at the
    end, with a handful of budget calls, not one per read."""
    calls = []

    class _Counting(http_body.BodyBudget):
        def acquire(self, more, already, wait_seconds, peer=None, ticket=None):
            calls.append((more, already))
            return super().acquire(more, already, wait_seconds, peer, ticket)

    budget = _Counting(1 << 20)
    body = bytes(range(256)) * 4096
    reader = http_body.BodyReader(io.BufferedReader(io.BytesIO(body)), 1 << 20, budget, 0)
    assert reader.read(_headers(f"Content-Length: {len(body)}\r\n")) == body
    assert budget.held == reader.held == 1 << 20
    # The first 64 KiB free, then 128, 256, 512 KiB and 1 MiB held: each twice what came.
    assert [a + m for m, a in calls] == [128 << 10, 256 << 10, 512 << 10, 1 << 20]
    reader.release()
    assert budget.held == 0


def test_bodies_that_grow_together_never_all_wait():
    """Two bodies each hold part of the budget and need more than is left: the older one (the
    first to hold bytes) always fits, so neither waits out its time; the younger waits."""
    budget = http_body.BodyBudget(limit_bytes=1000, exempt_bytes=100)
    assert budget.acquire(500, 0, 0, ticket="a")
    assert budget.acquire(400, 0, 0, ticket="b")
    assert not budget.acquire(300, 400, 0, ticket="b")  # over the limit, and not the oldest
    assert budget.acquire(300, 500, 0, ticket="a")      # the oldest: no wait
    budget.release(800, ticket="a")
    assert budget.acquire(300, 400, 0, ticket="b")      # now b is the oldest
    budget.release(700, ticket="b")
    assert budget.held == 0 and budget.refused == 1


def test_one_peer_beyond_its_first_body_holds_at_most_its_share():
    budget = http_body.BodyBudget(limit_bytes=1000, exempt_bytes=100, peer_share=0.5)
    assert budget.acquire(400, 0, 0, peer="a")
    assert not budget.acquire(400, 0, 0, peer="a")   # a's 800 > its share of 500
    assert budget.acquire(400, 0, 0, peer="b")        # another peer still gets room
    assert budget.acquire(100, 400, 0, peer="a")      # a's first body may grow
    budget.release(500, peer="a")
    budget.release(400, peer="b")
    assert budget.held == 0
    assert budget.acquire(900, 0, 0, peer="a")        # a first body may take what fits
    assert not budget.acquire(200, 0, 0, peer="c") and budget.refused == 2


# ----------------------------------------------------------------------------- end to end

class _FakeCore:
    def __init__(self):
        self.metrics = types.SimpleNamespace(exposition=lambda: b"")
        self.options = types.SimpleNamespace(limits=RequestLimits())


def _answer_status(sock) -> int:
    line = sock.makefile("rb").readline()
    return int(line.split()[1]) if line else 0


def test_a_trickling_upload_does_not_stop_a_normal_large_body():
    """One connection declares a 1 MiB body (the whole budget), sends 100 KiB, then a byte
    every 0.1 s. It holds about the 100 KiB it sent, not the 1 MiB it declared, so normal
    250 KiB bodies from another connection (the same peer: within its share of the budget) are read and answered (400: an empty document)
    while it trickles, none waiting for it (before: each waited out the trickler's grace or
    the REST timeout, then 503); the budget is free again once the trickler is gone."""
    gw = rest.RestGateway(_FakeCore(), "127.0.0.1", 0, 5.0, max_body_bytes=1 << 20,
                          body_pace=http_body.BodyPace(grace_seconds=60.0,
                                                       min_bytes_per_second=256 << 10))
    gw.start()
    stop = threading.Event()
    try:
        trickler = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        trickler.sendall(f"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {1 << 20}\r\n\r\n".encode() + b" " * (100 << 10))
        for _ in range(500):  # until its first hold is taken
            if gw.body_budget.held:
                break
            time.sleep(0.01)
        assert 0 < gw.body_budget.held < 256 << 10  # about twice the 100 KiB it sent

        def trickle():
            while not stop.is_set():
                try:
                    trickler.sendall(b" ")
                except OSError:
                    return
                stop.wait(0.1)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        body = b" " * (250 << 10)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as normal:
                normal.sendall(f"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                assert _answer_status(normal) == 400  # parsed, not 503
        assert gw.body_budget.refused == 0
        for _ in range(500):  # the last normal body's hold ends just after its answer
            if gw.body_budget.held < 256 << 10:
                break
            time.sleep(0.01)
        assert gw.body_budget.held < 256 << 10  # the trickler's own
        trickler.settimeout(0.01)  # the trickler is still being read: no answer yet
        with pytest.raises(TimeoutError):
            trickler.recv(1)
        stop.set()
        sender.join(5)
        trickler.close()
        for _ in range(500):
            if not gw.body_budget.held:
                break
            time.sleep(0.01)
        assert gw.body_budget.held == 0
    finally:
        stop.set()
        gw.stop(1.0)
