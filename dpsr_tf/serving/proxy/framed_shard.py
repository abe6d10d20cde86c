"""Predict calls from the proxy to a model server on the same host, as frames on the UNIX
socket the server opens with `dpsr serve --framed_predict_socket=PATH` (the protocol:
dpsr_tf/serving/frames.py), instead of as gRPC calls.

Through gRPC, grpc.aio's client half (its call objects, its poller thread, the wake-ups of the
loop) was the largest share of the proxy's CPU per answer after the framed hop took its server
half away (docs/benchmarks.md, "The proxy's framed hop"), and the model server's front end
spent its own time on the same call. A frame costs neither: the proxy writes it on the loop and
the server reads it on a thread of its own.

A replica gets this path with a `local_replica { address: "host:port" framed_socket: "PATH" }`
in the proxy config (proxy/config.py): Predict goes as frames, every other method over gRPC to
the address. Failures look like gRPC's to the caller (grpc.aio.AioRpcError with the same
codes), so failover, hedging and outlier ejection (shard_call.py) treat both paths alike:
  * no server listening, or the connection ends under a call: UNAVAILABLE;
  * the deadline passes: a cancel frame goes to the server, the call ends DEADLINE_EXCEEDED;
  * the caller cancels (a hedge won, the client went away): a cancel frame, as gRPC's
    RST_STREAM, and the server drops the call if its run has not started.
The server is trusted (a socket its owner made); an answer frame that breaks the protocol
ends the connection and fails its calls UNAVAILABLE.
"""
import asyncio
import logging
from typing import Dict, Optional

import grpc

from dpsr_tf.serving import frames
from dpsr_tf.serving.errors import code_from_int
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY
from dpsr_tf.serving.proxy.forwarding import request_bytes

_LOG = logging.getLogger("serving.proxy.framed_shard")
# The largest answer frame accepted (the gRPC channels to the shards take any size).
MAX_ANSWER_BYTES = 1 << 30


def _error(code: grpc.StatusCode, details: str, trailers=()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                details=details)


class _Connection(asyncio.Protocol):
    """One connection to the server's framed socket: its calls waiting for answers."""

    def __init__(self, path: str):
        self.path = path
        self.transport: Optional[asyncio.Transport] = None
        self.waiting: Dict[int, asyncio.Future] = {}
        self.closed = False
        self.retiring = False  # closes once its calls are answered (FramedShardClient.close)
        self._buffer = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, call_id: int, frame: bytes, future: asyncio.Future) -> None:
        """Writes a request frame; `future` gets its answer.

        Raises:
          grpc.aio.AioRpcError: UNAVAILABLE, the connection has ended (it may end between the
            connect a call waited for and its turn to write).
        """
        if self.closed or self.retiring:
            raise _error(grpc.StatusCode.UNAVAILABLE,
                         f"framed Predict socket {self.path}: the connection ended")
        self.waiting[call_id] = future
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        at = 0
        try:
            while len(buf) - at >= frames.HEAD.size:
                call_id, size = frames.answer_body_size(
                    bytes(buf[at:at + frames.HEAD.size]), MAX_ANSWER_BYTES)
                end = at + frames.HEAD.size + size
                if len(buf) < end:
                    break
                answer = frames.parse_answer(memoryview(buf)[at + frames.HEAD.size:end])
                at = end
                future = self.waiting.pop(call_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except frames.FrameError as e:
            _LOG.error("framed Predict connection to %s ended: %s", self.path, e)
            self.transport.abort()
            self._fail_all(f"the answer broke the frame protocol: {e}")
            return
        del buf[:at]
        self._settle()

    def connection_lost(self, exc) -> None:
        why = f": {exc}" if exc else ""
        self._fail_all(f"the connection ended{why}")

    def cancel(self, call_id: int, error: Optional[Exception] = None) -> None:
        """Stops waiting for call `call_id` (failing it with `error`, if given) and asks the
        server to drop it."""
        future = self.waiting.pop(call_id, None)
        if future is None:
            return
        if error is not None and not future.done():
            future.set_exception(error)
        if not self.closed:
            self.transport.write(frames.cancel_frame(call_id))
        self._settle()

    def retire(self) -> None:
        """Takes no more calls, and closes once the calls it has are answered (or end)."""
        self.retiring = True
        self._settle()

    def _settle(self) -> None:
        if self.retiring and not self.waiting and not self.closed:
            self.closed = True
            self.transport.close()

    def _fail_all(self, why: str) -> None:
        self.closed = True
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_error(
                    grpc.StatusCode.UNAVAILABLE, f"framed Predict socket {self.path}: {why}"))


class FramedShardClient:
    """Predict calls to one model server's framed socket over `connections` connections (used
    in turn, each opened when first needed and again after it ends)."""

    def __init__(self, path: str, connections: int = 1):
        self.path = path
        self._connections: list = [None] * max(1, connections)
        self._connecting: list = [None] * len(self._connections)
        self._turn = 0
        self._next_id = 0
        self._closed = False
        self.calls = 0  # calls sent, for tests

    async def _connection(self) -> _Connection:
        self._turn = (self._turn + 1) % len(self._connections)
        i = self._turn
        c = self._connections[i]
        if c is not None and not c.closed:
            return c
        if self._connecting[i] is None:  # one connect at a time per slot; others wait for it
            self._connecting[i] = asyncio.ensure_future(self._connect(i))
        return await asyncio.shield(self._connecting[i])

    async def _connect(self, i: int) -> _Connection:
        try:
            _, c = await asyncio.get_running_loop().create_unix_connection(
                lambda: _Connection(self.path), self.path)
        except OSError as e:
            raise _error(grpc.StatusCode.UNAVAILABLE,
                         f"cannot connect to the framed Predict socket {self.path}: {e}") from e
        finally:
            self._connecting[i] = None
        self._connections[i] = c
        if self._closed:  # closed while connecting: nothing may use it
            c.retire()
        return c

    async def predict(self, request, timeout: Optional[float], metadata=None) -> bytes:
        """The serialized PredictResponse of `request` (a PredictRequest, or its bytes), sent
        for the client named in `metadata` (CLIENT_METADATA_KEY), within `timeout` seconds
        (the connect included).

        Raises:
          grpc.aio.AioRpcError: the server's error, or UNAVAILABLE / DEADLINE_EXCEEDED as the
            module says.
        """
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        client = dict(metadata or ()).get(CLIENT_METADATA_KEY, "")
        payload = request_bytes(request)
        if self._closed:
            raise _error(grpc.StatusCode.UNAVAILABLE,
                         f"framed Predict socket {self.path}: no longer this replica's")
        c = await self._connection()
        left = None if end is None else end - loop.time()
        if left is not None and left <= 0:
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._next_id += 1
        call_id = self._next_id
        frame = frames.request_frame(call_id, -1 if left is None else max(1, int(left * 1e6)),
                                     client, payload)
        future = loop.create_future()
        c.send(call_id, frame, future)
        self.calls += 1
        timer = None if end is None else loop.call_at(end, _expire, c, call_id)
        try:
            code, message, trailers, data = await future
        except asyncio.CancelledError:
            c.cancel(call_id)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if code != grpc.StatusCode.OK.value[0]:
            raise _error(code_from_int(code), message, trailers)
        return data

    def close(self) -> None:
        """Takes no more calls; each connection closes once the calls on it are answered (a
        reload that moves the replica, or removes it, loses no answer already on its way)."""
        self._closed = True
        for c in self._connections:
            if c is not None:
                c.retire()


def _expire(c: _Connection, call_id: int) -> None:
    c.cancel(call_id, _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
