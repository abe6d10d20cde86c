"""Request bodies of the REST gateway, read within limits.

A body comes with a Content-Length or in the chunked transfer coding (as TF Serving's evhttp
server accepts both); either way it is capped at the per-request limit, counted while it is
read, and it holds bytes of a server-wide budget from the moment it is read until its answer is
written, because a JSON body costs 10-25 times its size once parsed: the budget, not the
number of connections, bounds the memory that bodies take.

A body holds budget as its bytes arrive, not as its Content-Length declares: at most about
twice what has come (none for its first 64 KiB), so a client that declares a large body and
trickles it holds only what it has sent, and other large bodies are read beside it. A body
must also keep arriving (BodyPace): after a grace period it must have come at a minimum rate,
or it is answered 408 and its budget freed. One peer's bodies beyond its first hold at most a
share of the budget.
"""
import dataclasses
import itertools
import socket
import threading
import time
from typing import Callable, Dict, Optional

# Longest chunk-size line and trailer line accepted, and most trailer lines.
_MAX_LINE = 1024
_MAX_TRAILERS = 64
# Most hex digits of a chunk size (16 is 2^64; any larger size is over every limit anyway).
_MAX_SIZE_DIGITS = 16
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BodyError(Exception):
    """A body refused before it was read to its end: answer `status` with `message`, then
    close the connection (its unread rest must not be taken for the next request)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(ConnectionError):
    """The client closed the connection (or stalled past the timeout) in the middle of a body."""


@dataclasses.dataclass(frozen=True)
class BodyPace:
    """How fast a body must arrive: by `grace_seconds` + received / `min_bytes_per_second`
    after its first byte was awaited (time spent waiting for the budget not counted), as
    Apache's mod_reqtimeout MinRate. A body behind this is answered 408 and its budget freed.
    """
    grace_seconds: float = 10.0
    min_bytes_per_second: float = 256 << 10


class BodyBudget:
    """Bytes of request bodies held at once across every connection.

    A body larger than `exempt_bytes` waits until the bytes held plus its own fit in
    `limit_bytes`, at most `wait_seconds`. Bodies grow their hold as they arrive, so two
    bodies could each hold part and wait for the other; the oldest body holding budget (the
    first to take some, `ticket`) therefore always fits: it never waits, so no body waits
    forever, and one request of the largest allowed size is never refused. Bytes held stay
    under `limit_bytes` plus what that one body takes beyond it. Bodies up to `exempt_bytes`
    never wait, so ordinary queries do not queue behind large uploads. A peer's first body may
    take what fits; its further bodies only while the peer holds at most `peer_share` of
    the limit, so one client's many connections cannot take the whole budget.

    Attributes:
      refused: how many bodies gave up waiting (answered 503).
      peak_held: most bytes held at once.
    """

    def __init__(self, limit_bytes: int, exempt_bytes: int = 64 << 10,
                 peer_share: float = 0.5):
        self.limit_bytes = limit_bytes
        self.exempt_bytes = exempt_bytes
        self.peer_limit = int(limit_bytes * peer_share)
        self.refused = 0
        self.peak_held = 0
        self._held = 0
        self._by_peer: Dict[str, int] = {}
        self._holders: Dict[object, int] = {}  # ticket -> order in which it first held bytes
        self._order = itertools.count()
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def _oldest(self, ticket) -> bool:
        return (ticket is not None and ticket in self._holders
                and self._holders[ticket] == min(self._holders.values()))

    def _fits(self, more: int, already: int, peer: Optional[str], ticket) -> bool:
        if self._oldest(ticket):
            return True
        if self._held + more > self.limit_bytes and self._held != already:
            return False
        if peer is None:
            return True
        peer_held = self._by_peer.get(peer, 0)
        return peer_held == already or peer_held + more <= self.peer_limit

    def acquire(self, more: int, already: int, wait_seconds: Optional[float],
                peer: Optional[str] = None, ticket=None) -> bool:
        """Takes `more` bytes for a body of `peer` (None: not counted per peer) that holds
        `already`; False when they did not become free within `wait_seconds` (None: wait as
        long as it takes). `ticket`: the body's own hashable token, the same for each of its
        calls and its release (None: the body is never the oldest)."""
        if already + more <= self.exempt_bytes:
            return True
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        with self._cond:
            while not self._fits(more, already, peer, ticket):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.refused += 1
                    return False
                self._cond.wait(left)
            self._held += more
            if ticket is not None and ticket not in self._holders:
                self._holders[ticket] = next(self._order)
            if peer is not None:
                self._by_peer[peer] = self._by_peer.get(peer, 0) + more
            self.peak_held = max(self.peak_held, self._held)
            return True

    def release(self, held: int, peer: Optional[str] = None, ticket=None) -> None:
        """Returns the bytes a body held (0 or a size within `exempt_bytes`: nothing to do)."""
        if held <= self.exempt_bytes:
            return
        with self._cond:
            self._held -= held
            self._holders.pop(ticket, None)
            if peer is not None:
                left = self._by_peer.get(peer, 0) - held
                if left > 0:
                    self._by_peer[peer] = left
                else:
                    self._by_peer.pop(peer, None)
            self._cond.notify_all()


class BodyReader:
    """Reads one request's body from `rfile` under a size limit, a BodyBudget and a BodyPace.

    Args:
      rfile: the connection's buffered reader (io.BufferedReader: read1 and peek).
      max_bytes: largest body (--rest_api_max_body_bytes).
      budget: the server's BodyBudget.
      wait_seconds: how long a body may wait for budget before it is refused with 503.
      peer: the client's address, for the budget's per-peer share (None: not counted).
      pace: how fast the body must arrive (None: no minimum).
      sock: the connection's socket; each read's timeout is cut to the pace's deadline (its
        own timeout, the connection timeout, is put back afterwards).
      clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, rfile, max_bytes: int, budget: BodyBudget,
                 wait_seconds: Optional[float], peer: Optional[str] = None,
                 pace: Optional[BodyPace] = None, sock: Optional[socket.socket] = None,
                 clock: Callable[[], float] = time.monotonic):
        self._rfile = rfile
        self._max = max_bytes
        self._budget = budget
        self._wait = wait_seconds
        self._peer = peer
        self._pace = pace
        self._sock = sock
        self._clock = clock
        self._start = 0.0  # when the body was first awaited, plus time spent on the budget
        self._received = 0
        self.held = 0  # budget bytes to release once the answer is written

    def release(self) -> None:
        self._budget.release(self.held, self._peer, self)
        self.held = 0

    def _hold(self, total: int) -> None:
        if total <= self.held or total <= self._budget.exempt_bytes:
            return  # a body's first exempt bytes hold nothing; past them, it holds them too
        more = total - self.held
        began = self._clock()
        if not self._budget.acquire(more, self.held, self._wait, self._peer, self):
            raise BodyError(503, "the server is reading too many large request bodies at "
                                 "once; retry shortly (--rest_api_max_inflight_body_bytes)")
        self._start += self._clock() - began  # the client is not late while we make it wait
        self.held = total

    # ------------------------------------------------------------------ pace

    def _deadline(self) -> Optional[float]:
        if self._pace is None:
            return None
        return (self._start + self._pace.grace_seconds
                + self._received / self._pace.min_bytes_per_second)

    def _too_slow(self) -> BodyError:
        elapsed = self._clock() - self._start
        return BodyError(408, f"the request body came too slowly: {self._received:,} bytes in "
                              f"{elapsed:.1f} s; after {self._pace.grace_seconds:g} s a body "
                              f"must arrive at {self._pace.min_bytes_per_second / 1024:,.0f} "
                              "KiB/s or more; send it in one go")

    def _io(self, call):
        """`call()` (one read of the socket at most) within the pace's deadline."""
        deadline = self._deadline()
        if deadline is not None:
            left = deadline - self._clock()
            if left <= 0:
                raise self._too_slow()
            if self._sock is not None:
                own = self._sock.gettimeout()
                self._sock.settimeout(left if own is None else min(own, left))
        try:
            return call()
        except OSError as e:  # reset, or timeout mid-body
            if deadline is not None and isinstance(e, TimeoutError) and \
                    self._clock() >= deadline - 0.01:
                raise self._too_slow() from e
            raise ClientGone(f"connection ended mid-body: {e}") from e
        finally:
            if deadline is not None and self._sock is not None:
                self._sock.settimeout(own)

    def _too_large(self, size: int, exact: bool) -> BodyError:
        return BodyError(413, f"the request body is {size:,} bytes{'' if exact else ' or more'}"
                              f"; the limit is {self._max:,} (--rest_api_max_body_bytes)")

    def read(self, headers) -> bytes:
        """The body announced by `headers` (b"" when there is none).

        Raises:
          BodyError: malformed framing (400), an unsupported transfer coding (501), too large
            (413), no budget in time (503).
          ClientGone: the connection ended or stalled mid-body.
        """
        coding = headers.get_all("Transfer-Encoding") or []
        lengths = headers.get_all("Content-Length") or []
        if coding:
            if lengths:  # two framings: a request-smuggling pattern (RFC 9112 6.3)
                raise BodyError(400, "the request has both Transfer-Encoding and "
                                     "Content-Length; send one")
            value = ",".join(coding).strip().lower()
            if value != "chunked":
                raise BodyError(501, f"Transfer-Encoding {value[:40]!r} is not supported; send "
                                     "the body with a Content-Length or as 'chunked'")
            return self._read_chunked()
        if not lengths:
            return b""
        if len(set(v.strip() for v in lengths)) != 1:
            raise BodyError(400, "the request has several different Content-Length headers")
        text = lengths[0].strip()
        if not text.isascii() or not text.isdigit():
            raise BodyError(400, f"Content-Length {text[:40]!r} is not a number of bytes")
        length = int(text)
        if length > self._max:
            raise self._too_large(length, exact=True)
        self._start = self._clock()
        body = bytearray()
        self._read_into(body, length, hold=True)
        return body

    def _read_exactly(self, size: int) -> bytearray:
        body = bytearray()
        self._read_into(body, size)
        return body

    def _read_into(self, body: bytearray, size: int, hold: bool = False) -> None:
        """Appends `size` bytes to `body`, read as they arrive (memory follows what came, not
        what was declared). hold: first take budget for what may come next, at most as much
        again as the body has, none for its first `exempt_bytes`: a body sent in one go takes
        its budget in a few steps, a trickled one holds about what it has sent."""
        want = len(body) + size
        while len(body) < want:
            end = want
            if hold:
                end = min(want, max(2 * len(body), self._budget.exempt_bytes))
                self._hold(end)
            piece = self._io(lambda: self._rfile.read1(min(end - len(body), 1 << 20)))
            if not piece:
                raise ClientGone(f"connection ended after {len(body)} of {want} body bytes")
            self._received += len(piece)
            body += piece

    def _line(self, what: str) -> bytes:
        line = bytearray()
        while True:  # peek: at most one read of the socket each time, checked against the pace
            data = self._io(lambda: self._rfile.peek(1))
            if not data:
                raise ClientGone("connection ended inside a chunked body")
            room = _MAX_LINE + 1 - len(line)
            end = data.find(b"\n", 0, room)
            take = end + 1 if end >= 0 else min(len(data), room)
            line += self._rfile.read(take)  # already buffered
            self._received += take
            if end >= 0:
                return bytes(line)
            if len(line) > _MAX_LINE:
                raise BodyError(400, f"chunked body: {what} line is longer than {_MAX_LINE} "
                                     "bytes")

    def _read_chunked(self) -> bytearray:
        self._start = self._clock()
        body = bytearray()
        while True:
            line = self._line("chunk-size")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > _MAX_SIZE_DIGITS or \
                    not set(size_text) <= _HEX:
                raise BodyError(400, f"chunked body: {bytes(line[:40])!r} is not a "
                                     "hexadecimal chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > self._max:
                raise self._too_large(len(body) + size, exact=False)
            self._read_into(body, size, hold=True)
            if self._read_exactly(2) != b"\r\n":
                raise BodyError(400, "chunked body: a chunk is not followed by CRLF (its "
                                     "size line says fewer bytes than were sent)")
        for _ in range(_MAX_TRAILERS + 1):  # trailer fields, ignored, up to the empty line
            if self._line("trailer") in (b"\r\n", b"\n"):
                return body
        raise BodyError(400, f"chunked body: more than {_MAX_TRAILERS} trailer lines")

