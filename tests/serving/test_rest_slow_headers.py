"""REST request heads that arrive too slowly or grow too large (http_head.py): a client sending
its headers a byte at a time must not hold a connection's thread past the head's time, and a
head's header lines are bounded in bytes. Reads are counted against a fake clock; end-to-end
cases run a real gateway with raw sockets."""
import http.client
import io
import socket
import threading
import types

import pytest

from dpsr_tf.serving.model_server.api import http_head, rest
from dpsr_tf.serving.model_server.api.predict import RequestLimits
from tests.support.trickle import FakeClock, Trickle


def _read_head(reader: http_head.HeadReader):
    """What BaseHTTPRequestHandler reads of a head: the request line, then the headers."""
    reader.begin()
    line = reader.readline(65537)
    headers = http.client.parse_headers(reader)
    reader.end()
    return line, headers


def test_a_trickled_header_is_refused_at_the_heads_deadline():
    """A header sent a byte every 0.1 s: refused once 10 s have passed since the head's first
    byte, after about 100 reads (before: read for as long as it trickled)."""
    clock = FakeClock()
    raw = Trickle(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nX-Slow: ", clock, step=0.1,
                  byte=b"a")
    reader = http_head.HeadReader(io.BufferedReader(raw), None, seconds=10.0, clock=clock)
    with pytest.raises(http_head.HeadTooSlow, match="within 10 s"):
        _read_head(reader)
    assert 95 <= raw.reads <= 105, raw.reads


def test_the_wait_for_a_heads_first_byte_is_not_counted():
    """An idle keep-alive connection waits under the socket's timeout, not the head's: a head
    whose first byte comes after 60 s and the rest at once is read whole."""
    clock = FakeClock()
    raw = Trickle(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", clock,
                  step=0.1, byte=b"a", idle=60.0)
    reader = http_head.HeadReader(io.BufferedReader(raw), None, seconds=10.0, clock=clock)
    line, headers = _read_head(reader)
    assert line == b"GET /v1/models/m HTTP/1.1\r\n"
    assert headers["Accept"] == "*/*"


def test_header_lines_over_the_byte_limit_are_refused():
    """90 headers of 1,000 bytes (each line and their count within the standard library's
    limits) are 90 KB of head: refused at 64 KiB."""
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000)
                                            for i in range(90)) + b"\r\n"
    reader = http_head.HeadReader(io.BufferedReader(io.BytesIO(head)), None)
    with pytest.raises(http.client.LineTooLong, match="over 65536 bytes"):
        _read_head(reader)
    # The same head under a limit above its size is read whole.
    reader = http_head.HeadReader(io.BufferedReader(io.BytesIO(head)), None, max_bytes=1 << 20)
    assert len(_read_head(reader)[1]) == 90


def test_after_the_head_reads_are_the_buffered_readers():
    """The body is not the head's to time: after end(), reads go straight through."""
    clock = FakeClock()
    raw = Trickle(b"GET / HTTP/1.1\r\n\r\nbody", clock, step=100.0, byte=b"a")
    reader = http_head.HeadReader(io.BufferedReader(raw), None, seconds=1.0, clock=clock)
    _read_head(reader)
    assert reader.read(4) == b"body"
    assert reader.readline(3) == b"aaa"  # 300 fake seconds later, no deadline


class _FakeCore:
    def __init__(self):
        self.metrics = types.SimpleNamespace(exposition=lambda: b"# metrics\n")
        self.options = types.SimpleNamespace(limits=RequestLimits())


def _status(sock) -> int:
    line = sock.makefile("rb").readline()
    return int(line.split()[1]) if line else 0


def test_a_header_trickler_gets_408_and_others_are_served_meanwhile():
    """A real gateway with a 1 s head time: a connection sending a header byte every 20 ms is
    answered 408 and closed while it still has bytes to send (before: its head was read to
    its end, 2,000 bytes later, and answered 200), and another connection's requests are
    answered while it trickles."""
    gw = rest.RestGateway(_FakeCore(), "127.0.0.1", 0, 5.0, metrics_path="/metrics",
                          head_seconds=1.0)
    gw.start()
    stop = threading.Event()
    sent = {"bytes": 0}
    try:
        trickler = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
        trickler.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        def trickle():
            for _ in range(2000):
                if stop.is_set():
                    return
                try:
                    trickler.sendall(b"a")
                except OSError:  # closed by the server
                    return
                sent["bytes"] += 1
                stop.wait(0.02)
            try:
                trickler.sendall(b"\r\n\r\n")
            except OSError:
                pass

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as normal:
                normal.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _status(normal) == 200
        answer = trickler.makefile("rb")
        assert int(answer.readline().split()[1]) == 408
        assert sent["bytes"] < 2000  # refused before its head ended
        while answer.readline() not in (b"", b"\r\n"):  # the answer's headers
            pass
        answer.read()  # the body, then the server's close
        stop.set()
        sender.join(10)
        trickler.close()
    finally:
        stop.set()
        gw.stop(1.0)


def test_too_many_header_bytes_get_431():
    gw = rest.RestGateway(_FakeCore(), "127.0.0.1", 0, 5.0, metrics_path="/metrics")
    gw.start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                           + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(90))
                           + b"\r\n")
            assert _status(client) == 431
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status(client) == 200
    finally:
        gw.stop(1.0)
