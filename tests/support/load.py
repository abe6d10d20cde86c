"""The serving tests' one load generator: client threads calling Predict in a closed loop.

    with PredictLoad(stub, lambda thread, n: predict_request("dpsr", [f"q {thread} {n}"]),
                     threads=3, summary=lambda response: outputs(response)["partial"]) as load:
        waiting.wait_until(lambda: load.count("OK") > 20, "traffic")
    assert load.errors() == []

Every call is recorded in order (when it was sent, its status, and a summary of an OK
answer), so tests assert on counts and order, never on latencies: a loaded CI machine is
slow, not wrong.
"""
import collections
import dataclasses
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import grpc

OK = "OK"


@dataclasses.dataclass(frozen=True)
class Call:
    """One Predict call: sent at `start` (time.monotonic), answered with status `code` ("OK"
    or a grpc.StatusCode name); `summary` is summary(response) of an OK answer, else None."""
    start: float
    code: str
    details: str = ""
    summary: Any = None


def predict_once(stub, request, timeout_s: float = 10.0,
                 summary: Optional[Callable[[Any], Any]] = None) -> Call:
    """One Predict call on `stub`, recorded as a Call (an RPC error is a Call, not a raise)."""
    start = time.monotonic()
    try:
        response = stub.Predict(request, timeout=timeout_s)
    except grpc.RpcError as e:
        return Call(start, e.code().name, e.details() or "")
    return Call(start, OK, "", summary(response) if summary else None)


class PredictLoad:
    """Threads sending Predict until the `with` block ends.

    Args:
      stubs: one PredictionService stub, or several: each thread takes them in turn.
      request: a PredictRequest, or request(thread, n) -> PredictRequest for the n-th call
        (from 1) of a thread.
      threads: client threads.
      timeout_s: the deadline of each call.
      pause_s: the pause after each call of a thread (0: back to back).
      summary: summary(response) -> what an OK call keeps (None: nothing).
    """

    def __init__(self, stubs: Union[Any, Sequence[Any]],
                 request: Union[Any, Callable[[int, int], Any]], *, threads: int = 3,
                 timeout_s: float = 10.0, pause_s: float = 0.0,
                 summary: Optional[Callable[[Any], Any]] = None):
        self._stubs = list(stubs) if isinstance(stubs, (list, tuple)) else [stubs]
        self._request = request if callable(request) else (lambda thread, n: request)
        self._timeout_s, self._pause_s, self._summary = timeout_s, pause_s, summary
        self._calls: List[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                         for i in range(threads)]

    def _loop(self, thread: int) -> None:
        n = 0
        while not self._stop.is_set():
            stub = self._stubs[(thread + n) % len(self._stubs)]
            n += 1
            call = predict_once(stub, self._request(thread, n), self._timeout_s, self._summary)
            with self._lock:
                self._calls.append(call)
            if self._pause_s:
                self._stop.wait(self._pause_s)

    def calls(self) -> List[Call]:
        """Every call so far, in the order they were answered."""
        with self._lock:
            return list(self._calls)

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def count(self, code: str = OK) -> int:
        """Calls answered with `code` so far."""
        with self._lock:
            return sum(call.code == code for call in self._calls)

    def codes(self) -> collections.Counter:
        """Calls so far per status code name."""
        return collections.Counter(call.code for call in self.calls())

    def summaries(self, since: int = 0) -> List[Any]:
        """The summaries of the OK calls among calls()[since:]."""
        return [call.summary for call in self.calls()[since:] if call.code == OK]

    def errors(self) -> List[Tuple[str, str]]:
        """(code, details) of every call that was not OK."""
        return [(call.code, call.details) for call in self.calls() if call.code != OK]

    def __enter__(self) -> "PredictLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:  # a call in flight ends by its deadline at the latest
            t.join(timeout=self._timeout_s + 60)
