"""Errors of a client gone before its answer was sent: one line each, not an ERROR traceback.

When the client's deadline passes, it cancels, or its connection goes away while the answer is
being sent, the gRPC core refuses the send (`ExecuteBatchError`). That is the client's doing
and nothing is wrong with the server, yet grpc.aio logs it as an ERROR with a traceback
(`_LOGGER.exception` in its Cython `_handle_exceptions`, logger "grpc._cython.cygrpc"), one
per such call, so an impatient or hostile client fills the log with alarms. The same error can
also reach the event loop's exception handler (a task of ours that sent to a finished call).

`GoneClients` takes both routes: a filter on grpc's logger and the loop's exception handler.
Each gone client is counted and logged as a single line without a traceback, at INFO for the
1st, 10th, 100th, ... (with the count so far, so that a flood cannot fill the log) and at DEBUG
otherwise. Everything else passes unchanged: grpc's other records keep their level and
traceback, and other loop errors go to asyncio's default handler, traceback included.
"""
import asyncio
import logging
import threading

try:  # the core's refused send (grpc exposes it only in its Cython module)
    from grpc._cython.cygrpc import ExecuteBatchError as _ExecuteBatchError
except ImportError:  # pragma: no cover  (a grpcio without it: nothing to recognise)
    _ExecuteBatchError = None

GRPC_LOGGER = "grpc._cython.cygrpc"
_LOG = logging.getLogger("serving.gone_clients")


def _is_gone_client(error) -> bool:
    return _ExecuteBatchError is not None and isinstance(error, _ExecuteBatchError)


def _power_of_ten(n: int) -> bool:
    if n <= 0:
        return False
    while n % 10 == 0:
        n //= 10
    return n == 1


class GoneClients(logging.Filter):
    """A logging filter for grpc's logger and an asyncio exception handler in one.

    Attributes:
      count: answers not sent because their call had ended on the client's side.
      other_loop_errors: loop exception contexts passed on to asyncio's default handler.
    """

    def __init__(self, log: logging.Logger = _LOG):
        super().__init__()
        self._log = log
        self._lock = threading.Lock()
        self.count = 0
        self.other_loop_errors = 0

    def note(self, what: str) -> None:
        """Counts one gone client and logs it (one line; `what` names the call)."""
        with self._lock:
            self.count += 1
            count = self.count
        level = logging.INFO if _power_of_ten(count) else logging.DEBUG
        self._log.log(level, "answer not sent, the call had ended on the client's side "
                      "(deadline, cancellation or disconnect; %d so far): %s", count,
                      str(what).split("\n", 1)[0][:200])

    def filter(self, record: logging.LogRecord) -> bool:
        """logging.Filter: drops grpc's traceback record of a gone client (noted instead)."""
        if record.exc_info and _is_gone_client(record.exc_info[1]):
            self.note(record.getMessage())
            return False
        return True

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio exception handler (`loop.set_exception_handler`)."""
        if _is_gone_client(context.get("exception")):
            self.note(context.get("message", ""))
            return
        with self._lock:
            self.other_loop_errors += 1
        loop.default_exception_handler(context)


def install(loop: asyncio.AbstractEventLoop) -> GoneClients:
    """Puts a GoneClients on grpc's logger and as `loop`'s exception handler; returns it.
    `uninstall` takes it off again (a process installs one for its life)."""
    gone = GoneClients()
    logging.getLogger(GRPC_LOGGER).addFilter(gone)
    loop.set_exception_handler(gone)
    return gone


def uninstall(loop: asyncio.AbstractEventLoop, gone: GoneClients) -> None:
    logging.getLogger(GRPC_LOGGER).removeFilter(gone)
    loop.set_exception_handler(None)
