"""gRPC call plumbing shared by the model server and the proxy (grpc.aio).

Safe request decoding (a request whose bytes do not parse is answered INVALID_ARGUMENT, never
raised inside grpc), servicer registration, the client's deadline, abort with a ServingError's
status, the metadata key of a forwarded client, in-flight call tracking for draining, and
serving until SIGTERM/SIGINT.

Errors are answered with `context.abort()`, which sends the status alone (setting a code and
returning would also send an empty message, which a client that never opens its flow-control
window never lets through, so the call, and what it holds, would never end). The exception
abort raises stays in the call's state, and its traceback holds the handler's frames, which
hold the call and the request: a reference cycle that keeps every refused request, however
large, until a full garbage collection, rare in a server that froze its heap at start. So every
handler's exception has its traceback dropped once the call is done (`_guarded`), and errors
that cross threads or futures are re-created without one (`plain_error`).
"""
import asyncio
import concurrent.futures
import functools
import logging
import signal
import time
from typing import Optional

import grpc
from dpsr_tf.serving import gone_clients
from dpsr_tf.serving.errors import ServingError, truncate

_LOG = logging.getLogger("serving.grpc")
# The metadata key of the client a proxy (or the native front end) forwards a call for: the
# forwarder sends it, a server's per-client queues use it to tell the forwarder's clients apart.
CLIENT_METADATA_KEY = "dpsr-client"


def forwarded_client(context) -> Optional[str]:
    """The client named in the call's CLIENT_METADATA_KEY metadata, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA_KEY:
            return value
    return None


class _Malformed:
    """Stands for a request whose bytes did not parse (answered INVALID_ARGUMENT)."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


def malformed_message(method: str, error: str) -> str:
    """The INVALID_ARGUMENT message of a `method` request whose bytes did not parse."""
    return (f"the {method} request is not a valid protobuf message ({error}); send a "
            "serialized request of the tensorflow_serving API")


def _safe_deserializer(deserialize):
    def parse(data):
        try:
            return deserialize(data)
        except Exception as e:  # pylint: disable=broad-except  (DecodeError, RuntimeWarning)
            return _Malformed(f"{type(e).__name__}: {e}")
    return parse


def _drop_traceback(error: BaseException, _context) -> None:
    error.__traceback__ = None
    error.__context__ = None


def _guarded(behavior, method: str):
    async def handle(request, context):
        try:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    truncate(malformed_message(method, request.error)))
            return await behavior(request, context)
        except BaseException as e:  # AbortError, CancelledError: kept by the call's state
            context.add_done_callback(functools.partial(_drop_traceback, e))
            raise
    return handle


class _SafeDecoding(grpc.GenericRpcHandler):
    """Wraps a generated service's handlers so that request bytes that do not parse are
    answered INVALID_ARGUMENT (as TF Serving does), not UNKNOWN "Unexpected DecodeError".
    The methods named in `raw_responses` return their answer's bytes (no serializer: grpc.aio
    would run it on the event loop)."""

    def __init__(self, inner, raw_responses=frozenset(), request_parsers=None):
        self._inner = inner
        self._raw_responses = raw_responses
        self._request_parsers = request_parsers or {}
        self._cache = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method not in self._cache:
            handler = self._inner.service(handler_call_details)
            if handler is not None and handler.unary_unary is not None:
                name = method.rsplit("/", 1)[-1]
                parse = self._request_parsers.get(name, handler.request_deserializer)
                handler = handler._replace(
                    request_deserializer=_safe_deserializer(parse),
                    unary_unary=_guarded(handler.unary_unary, name))
                if name in self._raw_responses:
                    handler = handler._replace(response_serializer=None)
            self._cache[method] = handler
        return self._cache[method]


class _Capture:
    def __init__(self):
        self.handlers = []

    def add_generic_rpc_handlers(self, handlers):
        self.handlers.extend(handlers)


def add_servicer(add_to_server, servicer, server, raw_responses=(),
                 request_parsers=None) -> None:
    """`add_XServicer_to_server(servicer, server)` of a generated module, with requests that do
    not parse answered INVALID_ARGUMENT.

    Args:
      raw_responses: names of methods (e.g. "Predict") whose handler returns the answer
        already serialized (bytes), made off the event loop.
      request_parsers: method name -> what makes its handler's request from the bytes, in
        place of the generated parser (e.g. the proxy's Predict, which keeps the bytes).
    """
    capture = _Capture()
    add_to_server(servicer, capture)
    raw = frozenset(raw_responses)
    server.add_generic_rpc_handlers(tuple(_SafeDecoding(h, raw, request_parsers or {})
                                          for h in capture.handlers))


def client_timeout(context):
    """Seconds left of the client's deadline, or None when it set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return max(0.0, remaining)


async def abort(context, error: ServingError):
    """Answers the call with `error`'s code and truncated message (raises grpc's AbortError)."""
    await context.abort(error.code, truncate(error.message))


def plain_error(error: BaseException) -> ServingError:
    """A ServingError with `error`'s code and message, and no traceback holding frames."""
    if isinstance(error, ServingError):
        return ServingError(error.code, error.message)
    if isinstance(error, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return ServingError(grpc.StatusCode.CANCELLED, "request cancelled")
    _LOG.error("internal error", exc_info=error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


async def outcome(future: concurrent.futures.Future):
    """Waits for `future` and returns (result, None) or (None, ServingError), without raising
    its exception here (a raised exception's traceback would hold this frame, which holds the
    future, which holds the exception: a reference cycle). Cancelling the wait cancels
    `future`. A future already done (a request refused before any run: most of a flood's)
    is read at once, without a trip through the loop's wake-up pipe."""
    if not future.done():
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_):
            loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))
        future.add_done_callback(wake)
        try:
            await waiter
        except asyncio.CancelledError:
            future.cancel()
            raise
    if future.cancelled():
        return None, ServingError(grpc.StatusCode.CANCELLED, "request cancelled")
    error = future.exception()
    if error is not None:
        return None, plain_error(error)
    return future.result(), None


class InFlight:
    """Counts calls from the moment a handler starts until gRPC has sent their status, so that
    shutdown waits for exactly those (grpc.aio's `stop(grace)` may wait out the whole grace
    period while idle clients stay connected).

    A call counts until its done-callback, not until its handler returns: the response is
    serialized and sent after the handler returns, and stopping the server in between cancels
    the call although its answer was ready.

    Shutdown drains by refusal, not by `server.stop(grace)` at once: gRPC core cancels every
    call it has received but not yet handed to a handler the moment its shutdown starts, and on
    a loaded machine a few such calls are always queued (CI saw 2 of 72 calls in flight at
    SIGTERM CANCELLED). So the server keeps running while it drains; handlers that start after
    the drain began answer UNAVAILABLE (retriable, and the proxy fails over on it), and the
    server stops only once the running calls are answered and the queue had time to empty.
    """

    # After the running calls are answered, keep refusing for this long before stopping, so
    # that calls gRPC queued before the stop reach a handler and get UNAVAILABLE rather than
    # CANCELLED (refusals are cheap: a backlog empties in milliseconds; this bounds loop lag).
    REFUSE_SECONDS = 1.0
    # ...but stop sooner when no call at all has arrived for this long.
    QUIET_SECONDS = 0.25

    def __init__(self):
        self.count = 0
        self.draining = False
        self._idle = None
        self._last_start = 0.0

    def track(self, context) -> bool:
        """Counts the call of `context` until it is done (call at the top of a handler).
        False once the server drains: the caller answers `DRAINING` and does no work."""
        self._last_start = time.monotonic()
        if self.draining:
            return False
        self.count += 1
        context.add_done_callback(self._done)
        return True

    def _done(self, _context) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def stop_server(self, server, grace_seconds: float) -> None:
        """Refuses new RPCs, waits up to `grace_seconds` for running ones, then stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        self.draining = True
        self._idle = asyncio.Event()
        if self.count:
            try:
                await asyncio.wait_for(self._idle.wait(), grace_seconds)
            except asyncio.TimeoutError:
                _LOG.warning("stopping with %d calls still running after %.1f s", self.count,
                             grace_seconds)
        refuse_until = min(deadline, loop.time() + self.REFUSE_SECONDS)
        while loop.time() < refuse_until:
            quiet_for = time.monotonic() - self._last_start
            if quiet_for >= self.QUIET_SECONDS:
                break
            await asyncio.sleep(min(self.QUIET_SECONDS - quiet_for, refuse_until - loop.time()))
        await server.stop(None)


async def serve_until_signal(make_server, log: logging.Logger) -> None:
    """Makes the server on the running loop (`make_server()`: a ModelServer or ProxyServer),
    starts it, waits for SIGTERM/SIGINT, then stops it (its stop() drains:
    InFlight.stop_server). A start that fails is stopped before its error propagates."""
    loop = asyncio.get_running_loop()
    gone = gone_clients.install(loop)  # a client gone before its answer: one line, no traceback
    try:
        server = make_server()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except BaseException:
            # What start() began (the gRPC server and its threads, the model core) would keep
            # the process from exiting with its message: end it first.
            try:
                await server.stop(0)
            except Exception:  # pylint: disable=broad-except
                log.exception("stopping after a failed start")  # the start's error goes on
            raise
        await stop.wait()
        log.info("shutting down")
        await server.stop()
    finally:
        gone_clients.uninstall(loop, gone)


DRAINING = ServingError(grpc.StatusCode.UNAVAILABLE,
                        "the server is shutting down; send the call to another replica")
