"""A REST request's head (request line and headers) bounded in time and in bytes.

The socket timeout (--rest_api_connection_timeout_in_ms) bounds each read, not a whole head: a
client sending a header byte every few seconds would hold its connection's thread for as long as
it likes (a slow-loris), and the standard library allows 100 header lines of 64 KiB each. Here a
head must be whole within `seconds` of its first byte (the wait for that byte, an idle keep-alive
connection, stays the socket timeout's), as Apache's RequestReadTimeout header=; slower: 408 and
the connection closed. Its header lines may total `max_bytes` (nginx allows 32 KiB); more: 431.
"""
import http.client
import socket
import time
from typing import Callable, Optional

# Apache's RequestReadTimeout waits 20 s for a head; a client on a slow link sends a few hundred
# bytes of head in well under a second.
HEAD_SECONDS = 10.0
MAX_HEAD_BYTES = 64 << 10


class HeadTooSlow(Exception):
    """The request head did not arrive within its time (answered 408)."""


class HeadReader:
    """The connection's reader for BaseHTTPRequestHandler (its `rfile`): between `begin()` and
    `end()` each readline (the request line, then the headers) is read at most one socket read
    at a time, each read's timeout cut to the head's deadline; otherwise it is the buffered
    reader itself (bodies: http_body.BodyReader).

    Args:
      rfile: the connection's io.BufferedReader (peek, read).
      sock: the connection's socket (None: reads are not cut, only checked between them).
      seconds: how long a head may take from its first byte.
      max_bytes: most bytes of header lines after the request line.
      clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, rfile, sock: Optional[socket.socket], seconds: float = HEAD_SECONDS,
                 max_bytes: int = MAX_HEAD_BYTES, clock: Callable[[], float] = time.monotonic):
        self._rfile = rfile
        self._sock = sock
        self._seconds = seconds
        self._max_bytes = max_bytes
        self._clock = clock
        self._in_head = False
        self._deadline = None
        self._lines = 0
        self._header_bytes = 0

    def begin(self) -> None:
        """A new request's head is next (its clock starts at its first byte)."""
        self._in_head = True
        self._deadline = None
        self._lines = 0
        self._header_bytes = 0

    def end(self) -> None:
        """The head is read (or refused): reads go straight to the buffered reader."""
        self._in_head = False

    def readline(self, limit: int = -1) -> bytes:
        if not self._in_head:
            return self._rfile.readline(limit)
        line = b""
        while limit < 0 or len(line) < limit:
            data = self._peek()
            if not data:
                break  # the client closed
            newline = data.find(b"\n")
            take = len(data) if newline < 0 else newline + 1
            if limit >= 0:
                take = min(take, limit - len(line))
            line += self._rfile.read(take)  # already buffered
            if line.endswith(b"\n"):
                break
            self._count(len(line))
        self._count(len(line))
        self._lines += 1
        if self._lines > 1:
            self._header_bytes += len(line)
        return line

    def _count(self, pending: int) -> None:
        """Refuses header lines (after the request line) over max_bytes, counting the line
        being read (`pending` bytes so far)."""
        if self._lines and self._header_bytes + pending > self._max_bytes:
            # parse_request answers it 431 (Request Header Fields Too Large).
            raise http.client.LineTooLong(f"request headers over {self._max_bytes} bytes")

    def _peek(self) -> bytes:
        """What is buffered, or one read of the socket, within the head's deadline."""
        if self._deadline is None:
            data = self._rfile.peek(1)  # the first byte: the socket's own timeout applies
            if data:
                self._deadline = self._clock() + self._seconds
            return data
        left = self._deadline - self._clock()
        if left <= 0:
            raise self._too_slow()
        if self._sock is None:
            return self._rfile.peek(1)
        own = self._sock.gettimeout()
        self._sock.settimeout(left if own is None else min(own, left))
        try:
            return self._rfile.peek(1)
        except TimeoutError:
            if self._clock() >= self._deadline:  # the deadline's, not the socket timeout's
                raise self._too_slow() from None
            raise
        finally:
            self._sock.settimeout(own)

    def _too_slow(self) -> HeadTooSlow:
        return HeadTooSlow(f"the request line and headers did not arrive within "
                           f"{self._seconds:g} s of their first byte")

    def __getattr__(self, name):
        return getattr(self._rfile, name)
