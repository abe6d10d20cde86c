"""Predict calls from the proxy's native front end as frames on a private UNIX socket
(dpsr_tf/serving/frames.py), answered on the proxy's event loop without grpc.aio's server side.

Through the gRPC hop, grpc.aio's machinery for the incoming call (its Cython call objects,
metadata, the handler's task and the answer's send) was about a third of the Python time a
proxied Predict cost, beside its calls to the shards (docs/benchmarks.md, "The proxy's framed
hop": 0.45 ms of CPU per answer framed, 0.70 over gRPC).
Here the socket is read by an asyncio protocol on the proxy's own loop: each request frame
starts the servicer's Predict as a task with a context that stands for grpc.aio's (the client
the front end names, the deadline, abort, trailing metadata), and its answer frame is written
when the task ends. A cancel frame (the client cancelled, or its deadline passed) cancels the
task, as grpc.aio cancels a handler.

The socket sits in the front end's private directory (mode 0700), so a frame that breaks the
protocol is a bug: it ends the connection, and the front end fails that connection's calls
UNAVAILABLE and connects again.
"""
import asyncio
import functools
import logging
import os
import time
from typing import Dict, Optional, Set

import grpc

from dpsr_tf.serving import frames
from dpsr_tf.serving.errors import truncate
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY, malformed_message
from dpsr_tf.serving.proxy.forwarding import ReceivedPredict

_LOG = logging.getLogger("serving.proxy.framed")


class FramedAbort(Exception):
    """Raised by FramedCallContext.abort, as grpc.aio's abort raises its AbortError."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class FramedCallContext:
    """What ProxyServicer asks of a grpc.aio ServicerContext, for one framed call.

    The client is the one the front end names (its connection, and the client a proxy in front
    names), as the gRPC hop's CLIENT_METADATA_KEY metadata does.
    """

    __slots__ = ("_client", "_deadline", "trailers", "_done")

    def __init__(self, client: str, deadline: Optional[float]):
        self._client = client
        self._deadline = deadline  # time.monotonic(), or None
        self.trailers = ()
        self._done = []

    def peer(self) -> str:
        return self._client

    def invocation_metadata(self):
        return ((CLIENT_METADATA_KEY, self._client),)

    def time_remaining(self) -> Optional[float]:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = ""):
        raise FramedAbort(code, details)

    def set_trailing_metadata(self, metadata) -> None:
        self.trailers = tuple(metadata)

    def add_done_callback(self, callback) -> None:
        self._done.append(callback)

    def done(self) -> None:
        """The answer is sent: runs the done callbacks (in-flight tracking)."""
        for callback in self._done:
            callback(self)


class _Connection(asyncio.Protocol):
    """One front-end connection: frames in, a task per call, answer frames out."""

    def __init__(self, server: "FramedProxyCalls"):
        self._server = server
        self._transport = None
        self._buffer = bytearray()
        self._tasks: Dict[int, asyncio.Task] = {}
        self._closed = False

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._server.connections.add(self)

    def data_received(self, data) -> None:
        self._buffer += data
        buf, at = self._buffer, 0
        try:
            while len(buf) - at >= frames.HEAD.size:
                kind, call_id, size = frames.body_size(
                    bytes(buf[at:at + frames.HEAD.size]), self._server.max_frame)
                end = at + frames.HEAD.size + size
                if len(buf) < end:
                    break
                body = bytes(buf[at + frames.HEAD.size:end])
                at = end
                if kind == frames.CANCEL:
                    task = self._tasks.get(call_id)
                    if task is not None:
                        task.cancel()
                else:
                    self._request(call_id, body)
        except frames.FrameError as e:
            _LOG.error("framed Predict connection ended: %s", e)
            self.close()
            return
        if at == len(buf):
            self._buffer = bytearray()  # a large request's buffer is not kept for the next
        else:
            del buf[:at]

    def _request(self, call_id: int, body: bytes) -> None:
        deadline_us, client, payload = frames.parse_request(body)
        self._server.calls += 1
        try:
            request = ReceivedPredict.parse(payload)  # the shards get these bytes
        except Exception as e:  # pylint: disable=broad-except  (DecodeError, RuntimeWarning)
            self._send(call_id, grpc.StatusCode.INVALID_ARGUMENT,
                       truncate(malformed_message("Predict", f"{type(e).__name__}: {e}")))
            return
        context = FramedCallContext(
            client, None if deadline_us < 0 else time.monotonic() + deadline_us / 1e6)
        task = asyncio.get_running_loop().create_task(
            self._server.servicer.Predict(request, context))
        self._tasks[call_id] = task
        # Answered from the task's end, not from inside it: a task cancelled before its first
        # step never runs a line of its coroutine, yet its call still gets its one answer.
        task.add_done_callback(functools.partial(self._answer, call_id, context))

    def _answer(self, call_id: int, context: FramedCallContext, task: asyncio.Task) -> None:
        self._tasks.pop(call_id, None)
        payload = b""
        if task.cancelled():
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client"
        elif task.exception() is None:
            code, message = grpc.StatusCode.OK, ""
            payload = task.result().SerializeToString()
        elif isinstance(task.exception(), FramedAbort):
            error = task.exception()
            code, message = error.code, truncate(error.details)
            error.__traceback__ = None  # its frames hold the request: free it with the task
        else:  # a bug: answered as grpc answers a handler that raised
            error = task.exception()
            _LOG.error("framed Predict call failed", exc_info=error)
            code, message = grpc.StatusCode.UNKNOWN, truncate(f"Unexpected error: {error!r}")
        self._send(call_id, code, message, payload, context.trailers)
        context.done()

    def _send(self, call_id: int, code: grpc.StatusCode, message: str, payload: bytes = b"",
              trailers=()) -> None:
        if not self._closed:
            self._transport.write(frames.answer_frame(call_id, code, message, payload, trailers))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc) -> None:
        self._closed = True
        self._server.connections.discard(self)
        for task in list(self._tasks.values()):
            task.cancel()  # nobody waits for them: the front end failed their calls
        self._tasks.clear()


class FramedProxyCalls:
    """Serves framed Predict calls on `path` (a UNIX socket it creates) for `servicer` (the
    proxy's ProxyServicer), on the running event loop.

    Args:
      servicer: answers Predict(request, context) as a coroutine.
      path: where to create the socket (in the front end's private directory).
      max_request_bytes: the largest request message (the front end refuses larger ones).
    """

    def __init__(self, servicer, path: str, max_request_bytes: int):
        self.servicer = servicer
        self.max_frame = max_request_bytes + frames.FRAME_OVERHEAD
        self._path = path
        self._server = None
        self.connections: Set[_Connection] = set()
        self.calls = 0  # requests read, for tests and the log

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Connection(self), self._path)

    async def stop(self) -> None:
        """Stops accepting and closes every connection (after the front end drained)."""
        if self._server is None:
            return
        self._server.close()
        for c in list(self.connections):
            c.close()
        await self._server.wait_closed()
        try:
            os.unlink(self._path)
        except OSError:
            pass
