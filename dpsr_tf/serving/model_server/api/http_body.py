"""Request bodies of the REST gateway, read within limits.

A body comes with a Content-Length or in the chunked transfer coding (as TF Serving's evhttp
server accepts both); either way it is capped at the per-request limit, counted while it is
read, and it holds bytes of a server-wide budget from the moment it is read until its answer is
written, because a JSON body costs 10-25 times its size once parsed: the budget, not the
number of connections, bounds the memory that bodies take.
"""
import threading
import time
from typing import Optional

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


class BodyBudget:
    """Bytes of request bodies held at once across every connection.

    A body larger than `exempt_bytes` waits until the bytes held plus its own fit in
    `limit_bytes`, at most `wait_seconds`; a body that holds the whole budget alone always fits,
    so one request of the largest allowed size is never refused. Bodies up to `exempt_bytes`
    never wait, so ordinary queries do not queue behind large uploads.

    Attributes:
      refused: how many bodies gave up waiting (answered 503).
      peak_held: most bytes held at once.
    """

    def __init__(self, limit_bytes: int, exempt_bytes: int = 64 << 10):
        self.limit_bytes = limit_bytes
        self.exempt_bytes = exempt_bytes
        self.refused = 0
        self.peak_held = 0
        self._held = 0
        self._cond = threading.Condition()

    def acquire(self, more: int, already: int, wait_seconds: Optional[float]) -> bool:
        """Takes `more` bytes for a body that holds `already`; False when they did not become
        free within `wait_seconds` (None: wait as long as it takes)."""
        if already + more <= self.exempt_bytes:
            return True
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        with self._cond:
            while self._held + more > self.limit_bytes and self._held != already:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.refused += 1
                    return False
                self._cond.wait(left)
            self._held += more
            self.peak_held = max(self.peak_held, self._held)
            return True

    def release(self, held: int) -> None:
        """Returns the bytes a body held (0 or a size within `exempt_bytes`: nothing to do)."""
        if held <= self.exempt_bytes:
            return
        with self._cond:
            self._held -= held
            self._cond.notify_all()


class BodyReader:
    """Reads one request's body from `rfile` under a size limit and a BodyBudget.

    Args:
      rfile: the connection's buffered reader.
      max_bytes: largest body (--rest_api_max_body_bytes).
      budget: the server's BodyBudget.
      wait_seconds: how long a body may wait for budget before it is refused with 503.
    """

    def __init__(self, rfile, max_bytes: int, budget: BodyBudget,
                 wait_seconds: Optional[float]):
        self._rfile = rfile
        self._max = max_bytes
        self._budget = budget
        self._wait = wait_seconds
        self.held = 0  # budget bytes to release once the answer is written

    def release(self) -> None:
        self._budget.release(self.held)
        self.held = 0

    def _hold(self, total: int) -> None:
        if total <= self.held:
            return
        more = total - self.held
        if not self._budget.acquire(more, self.held, self._wait):
            raise BodyError(503, "the server is reading too many large request bodies at "
                                 "once; retry shortly (--rest_api_max_inflight_body_bytes)")
        self.held = total

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
        self._hold(length)
        return self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytes:
        try:
            data = self._rfile.read(size) if size else b""
        except OSError as e:  # reset or timeout mid-body
            raise ClientGone(f"connection ended mid-body: {e}") from e
        if len(data) != size:
            raise ClientGone(f"connection ended after {len(data)} of {size} body bytes")
        return data

    def _line(self, what: str) -> bytes:
        try:
            line = self._rfile.readline(_MAX_LINE + 1)
        except OSError as e:
            raise ClientGone(f"connection ended mid-body: {e}") from e
        if not line:
            raise ClientGone("connection ended inside a chunked body")
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise BodyError(400, f"chunked body: {what} line is longer than {_MAX_LINE} bytes")
        return line

    def _read_chunked(self) -> bytearray:
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
            self._hold(len(body) + size)
            body += self._read_exactly(size)
            if self._read_exactly(2) != b"\r\n":
                raise BodyError(400, "chunked body: a chunk is not followed by CRLF (its "
                                     "size line says fewer bytes than were sent)")
        for _ in range(_MAX_TRAILERS + 1):  # trailer fields, ignored, up to the empty line
            if self._line("trailer") in (b"\r\n", b"\n"):
                return body
        raise BodyError(400, f"chunked body: more than {_MAX_TRAILERS} trailer lines")

