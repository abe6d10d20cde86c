"""Predict calls from the native front end as frames on a private UNIX socket (the protocol:
front_end_cc/framed_backend.h), served without grpc.aio.

Through the gRPC hop, grpc.aio's machinery on the event loop was most of the Python time, and of
the GIL, that a Predict call cost the server (docs/benchmarks.md, "Where the two cores go"). Here
one thread per front-end connection reads frames with blocking reads (which release the GIL),
validates each request as the gRPC handler does (PredictionServicer: small requests on this
thread, large ones in its decode threads, clients in turn), and the run thread that completes a
request writes its answer frame. Everything else (other methods, streams) still comes over gRPC.

The front end's socket sits in its private directory (mode 0700): only this server's own front
end reaches it, so a frame that breaks the protocol (dpsr_tf/serving/frames.py) is a bug, and it
ends the connection (the front end fails that connection's calls UNAVAILABLE and connects
again). `dpsr serve --framed_predict_socket=PATH` opens a second one at PATH (mode 0600: this
user's processes) for a proxy on the same host (proxy/framed_shard.py), served the same way.
"""
import logging
import os
import queue
import socket
import stat
import threading
import time
from typing import Dict, Optional

import grpc
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import frames
from dpsr_tf.serving.errors import ServingError, truncate
from dpsr_tf.serving.grpc_calls import DRAINING, malformed_message, plain_error
from dpsr_tf.serving.model_server.api.grpc_services import PredictionServicer

_LOG = logging.getLogger("serving.framed")


def _read_exactly(conn: socket.socket, n: int) -> Optional[bytes]:
    """n bytes, or None at the end of the stream."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = conn.recv_into(view[got:], n - got)
        if r == 0:
            return None
        got += r
    return bytes(buf)


def _discard(conn: socket.socket, n: int) -> bool:
    """Reads and drops n bytes (1 MiB at a time); False at the end of the stream."""
    buf = bytearray(min(n, 1 << 20))
    while n:
        r = conn.recv_into(buf, min(n, len(buf)))
        if r == 0:
            return False
        n -= r
    return True


class _Connection:
    """One front-end connection: its pending calls and the lock its answer frames are written
    under, by the run threads that complete them.

    The reader thread never writes: an answer decided while it reads (a refusal, a request
    that fails validation) goes to a writer thread instead. Were the reader to block on a full
    socket while the front end's reader blocked writing a large request to it, neither would
    read again."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.write_lock = threading.Lock()
        self.pending: Dict[int, object] = {}  # call id -> the run's (or decoding's) future
        self.closed = False
        self.reader = None  # the reading thread's ident
        self._deferred = None  # frames the reader decided, for the writer thread
        # Those frames put and written, each counted by one thread (a call leaves `pending`
        # once its answer is written, or handed to the writer and counted here).
        self.deferred_put = 0
        self.deferred_written = 0

    def send(self, call_id: int, code: grpc.StatusCode, message: str = "",
             payload: bytes = b"") -> None:
        if self.closed:
            self.pending.pop(call_id, None)
            return
        frame = frames.answer_frame(call_id, code, truncate(message) if message else "", payload)
        if threading.get_ident() == self.reader:
            if self._deferred is None:
                self._deferred = queue.SimpleQueue()
                threading.Thread(target=self._write_deferred, name="framed_write",
                                 daemon=True).start()
            self.deferred_put += 1
            self.pending.pop(call_id, None)
            self._deferred.put(frame)
            return
        self.write(frame)
        self.pending.pop(call_id, None)  # after the write: drain() waits for it

    def write(self, frame: bytes) -> None:
        with self.write_lock:
            if self.closed:
                return
            try:
                self.conn.sendall(frame)
            except OSError:  # the front end went away: its reader thread ends this connection
                self.closed = True

    def _write_deferred(self) -> None:
        while True:
            frame = self._deferred.get()
            if frame is None:
                return
            self.write(frame)
            self.deferred_written += 1

    def end_writer(self) -> None:
        if self._deferred is not None:
            self._deferred.put(None)


class FramedPredictServer:
    """Serves framed Predict calls on `path` (a UNIX socket it creates) for `servicer`.

    Args:
      servicer: the server's PredictionServicer (its core, draining state and decode threads).
      path: where to create the socket: in the front end's private directory, or the user's
        --framed_predict_socket (`shared`).
      max_request_bytes: the largest request message (the front end refuses larger ones).
      shared: the socket is for other processes of this user (a proxy): a stale socket file
        left by a server that died is replaced, a live one refused, and the socket is made
        mode 0600 before it listens. A request over `max_request_bytes` is answered
        RESOURCE_EXHAUSTED, as gRPC answers one, and the connection serves on (a proxy's limit
        may be higher than this server's; a frame over the front end's allowance is read and
        dropped unparsed); from the front end such a frame is a bug, and ends the connection.

    Raises:
      OSError: `path` is taken (another server listens there, or it is not a socket) or
        cannot be created.
    """

    def __init__(self, servicer: PredictionServicer, path: str, max_request_bytes: int,
                 shared: bool = False):
        self._servicer = servicer
        self._path = path
        self._max_request_bytes = max_request_bytes
        self._max_frame = max_request_bytes + frames.FRAME_OVERHEAD
        self._shared = shared
        if shared:
            _remove_stale_socket(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            if shared:
                os.chmod(path, 0o600)  # before listen(): nobody else connects in between
            self._listener.listen(64)
        except OSError as e:
            self._listener.close()
            if not shared:
                raise
            raise OSError(f"--framed_predict_socket {path}: cannot create the socket: "
                          f"{e.strerror or e}") from e
        self._connections = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.calls = 0  # requests read, for tests and the log

    def start(self) -> None:
        threading.Thread(target=self._accept, name="framed_accept", daemon=True).start()

    def drain(self, timeout: float) -> int:
        """Waits up to `timeout` seconds for the calls in flight to be answered (new ones are
        refused once the servicer drains); the number still running."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                running = sum(len(c.pending) + c.deferred_put - c.deferred_written
                              for c in self._connections)
            if not running or time.monotonic() >= end:
                return running
            time.sleep(0.01)

    def stop(self) -> None:
        """Stops accepting and closes every connection (after the front end drained)."""
        with self._lock:
            self._stopping = True
            connections = list(self._connections)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in connections:
            _close(c)
        try:
            os.unlink(self._path)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            c = _Connection(conn)
            with self._lock:
                if self._stopping:
                    _close(c)
                    return
                self._connections.add(c)
            threading.Thread(target=self._serve, args=(c,), name="framed_read",
                             daemon=True).start()

    def _serve(self, c: _Connection) -> None:
        why = "the front end closed its connection"
        c.reader = threading.get_ident()
        try:
            while True:
                head = _read_exactly(c.conn, frames.HEAD.size)
                if head is None:
                    break
                kind, call_id, size = frames.body_size(
                    head, frames.MAX_FRAME if self._shared else self._max_frame)
                if size > self._max_frame:  # a proxy's request over this server's limit
                    if not _discard(c.conn, size):
                        break
                    c.send(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Received message larger than max ({size} bytes in its frame vs. "
                           f"{self._max_request_bytes})")
                    continue
                body = _read_exactly(c.conn, size) if size else b""
                if body is None:
                    break
                if kind == frames.CANCEL:
                    future = c.pending.get(call_id)
                    if future is not None:
                        future.cancel()
                    continue
                deadline_us, client, payload = frames.parse_request(body)
                self.calls += 1
                if len(payload) > self._max_request_bytes:  # only a shared socket's get here
                    c.send(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Received message larger than max ({len(payload)} vs. "
                           f"{self._max_request_bytes})")
                    continue
                self._request(c, call_id, deadline_us, client, payload)
        except frames.FrameError as e:
            why = str(e)
        except OSError as e:
            why = f"reading failed: {e}"
        finally:
            with self._lock:
                self._connections.discard(c)
            if not self._stopping and why != "the front end closed its connection":
                _LOG.error("framed Predict connection ended: %s", why)
            _close(c)

    def _request(self, c: _Connection, call_id: int, deadline_us: int, client: str,
                 payload) -> None:
        servicer = self._servicer
        if servicer.draining:
            c.send(call_id, DRAINING.code, DRAINING.message)
            return
        request = predict_pb2.PredictRequest()
        try:
            request.ParseFromString(payload)
        except Exception as e:  # pylint: disable=broad-except  (DecodeError, RuntimeWarning)
            c.send(call_id, grpc.StatusCode.INVALID_ARGUMENT,
                   malformed_message("Predict", f"{type(e).__name__}: {e}"))
            return
        deadline = None if deadline_us < 0 else time.monotonic() + deadline_us / 1e6
        key = ("framed", client)  # each front-end client is a client of the server's queues
        done = _Answer(c, call_id)
        try:
            future, decoding = servicer.start_predict(request, deadline, key, len(payload))
        except ServingError as e:
            c.send(call_id, e.code, e.message)
            return
        c.pending[call_id] = future
        future.add_done_callback(done.after_decoding if decoding else done)


class _Answer:
    """Done-callback of a call's future: writes its answer frame."""

    __slots__ = ("c", "call_id")

    def __init__(self, c: _Connection, call_id: int):
        self.c, self.call_id = c, call_id

    def after_decoding(self, decoding) -> None:
        if decoding.cancelled() or decoding.exception() is not None:
            self(decoding)
            return
        future = decoding.result()
        self.c.pending[self.call_id] = future
        future.add_done_callback(self)

    def __call__(self, future) -> None:
        if future.cancelled():
            self.c.send(self.call_id, grpc.StatusCode.CANCELLED,
                        "cancelled by the client before its run started")
            return
        error = future.exception()
        if error is not None:
            error = plain_error(error)
            self.c.send(self.call_id, error.code, error.message)
            return
        self.c.send(self.call_id, grpc.StatusCode.OK, payload=future.result())


def _remove_stale_socket(path: str) -> None:
    """Removes a socket file at `path` that nobody listens on (a server that died left it).

    Raises:
      OSError: something else is at `path`, or a live server listens there.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"--framed_predict_socket {path} exists and is not a socket; remove it "
                      "or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"--framed_predict_socket {path}: another server listens there; stop it or "
                  "choose another path")


def _close(c: _Connection) -> None:
    with c.write_lock:
        c.closed = True
    c.end_writer()
    for future in list(c.pending.values()):
        future.cancel()
    c.pending.clear()
    try:
        c.conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    c.conn.close()
