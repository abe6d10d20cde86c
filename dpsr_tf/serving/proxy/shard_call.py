"""One proxy call to one shard: replica choice, hedging and failover.

The rule (knobs in the ProxyConfig; dpsr_tf/serving/proxy/config.py HedgePolicy):

* The call goes to the least-loaded replica in rotation (dpsr_tf/serving/proxy/routing.py).
* Hedging: if that attempt has not answered after the hedge delay, the same call also goes to
  the next replica in rotation (never to an ejected one), and so on; the first good answer is
  returned and the other attempts are cancelled. An attempt that was hedged past and lost
  counts as a failure of its replica (outlier ejection, routing.py).
* Failover: an attempt that fails with UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED is followed at
  once by the next replica, in rotation or not, while the deadline allows.
* One retry: when every replica was tried and one failed with UNAVAILABLE from the backend (its
  connection reset or refused, or the server's own UNAVAILABLE; not an answer the proxy
  refused), that replica is asked once more while the deadline allows. A server whose front
  end restarts keeps its port (docs/serving.md), so the call in flight when it died is answered
  by the fresh one instead of failing.
* A replica without the requested version fails over too: NOT_FOUND, and INVALID_ARGUMENT
  whose message starts with "Unrecognized servable version label: " on a request that names a
  version_label (TF Serving's answer for an unknown label; during a rollout one replica may have
  the label before another). That error reaches the client only when every replica of the
  shard gave it.
* Other client errors (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) are returned at once.
* Nothing runs past the shard deadline: attempts still running then are cancelled and count as
  timeouts of their replicas.
* A shard whose replicas are all ejected for timing out fails at once with UNAVAILABLE (counted
  as status EJECTED per replica) rather than waiting on one (routing.py).
"""
import asyncio
import dataclasses
import time
from typing import Callable, Dict, Optional

import grpc
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.metrics import ProxyMetrics
from dpsr_tf.serving.proxy.peer_limits import backend_metadata
from dpsr_tf.serving.proxy.routing import Replica, Route

# The methods whose answers show that a replica runs the model (the others are answered
# beside the runs: a replica whose runs hang still answers them; routing.py).
MODEL_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})
CLIENT_ERRORS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED})
FAILOVER_ERRORS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.ABORTED})
UNKNOWN_LABEL_PREFIX = "Unrecognized servable version label: "


def _model_spec(request):
    return request.tasks[0].model_spec if hasattr(request, "tasks") else request.model_spec


def asks_latest(request) -> bool:
    """Whether a backend request asks for the latest version (no version or label)."""
    return _model_spec(request).WhichOneof("version_choice") is None


def lacks_version(code: grpc.StatusCode, details: str, request) -> bool:
    """Whether an error means "this replica has no such version (yet)": NOT_FOUND, or TF
    Serving's INVALID_ARGUMENT for an unknown label on a request that names one."""
    if code == grpc.StatusCode.NOT_FOUND:
        return True
    return (code == grpc.StatusCode.INVALID_ARGUMENT
            and details.startswith(UNKNOWN_LABEL_PREFIX)
            and _model_spec(request).WhichOneof("version_choice") == "version_label")


@dataclasses.dataclass
class _Attempt:
    replica: Replica
    started: float
    hedge_at: float  # when the next replica gets the call if this one is still silent
    hedged_past: bool = False


def _verdict_at(spec, started: float, deadline: float) -> Optional[float]:
    """When a timeout of an attempt sent at `started` with `deadline` is judged (routing.py's
    rule): None (at once) when it had the proxy's own time for a shard, else when that time
    has passed since it was sent (its client's deadline was shorter)."""
    own = (spec.shard_deadline_s or 0.8 * spec.deadline_s) if spec.sharded else spec.deadline_s
    return started + own if deadline - started < 0.9 * own else None


async def _send(replica: Replica, method: str, request, timeout: float, parse,
                payload: Optional[bytes] = None):
    metadata = backend_metadata()  # the client the call is for, as the backend's client
    framed = replica.framed if method == "Predict" else None  # a server on this host
    try:
        if framed is not None:
            data = await framed.predict(request if payload is None else payload, timeout,
                                        metadata)
        elif payload is not None:
            data = await replica.raw(method)(payload, timeout=timeout, metadata=metadata)
        elif parse is None:
            return await getattr(replica.stub, method)(request, timeout=timeout,
                                                       metadata=metadata)
        else:
            data = await replica.raw(method)(request, timeout=timeout, metadata=metadata)
    finally:
        replica.outstanding -= 1
    return predict_pb2.PredictResponse.FromString(data) if parse is None else parse(data)


class ShardCaller:
    """Calls shards of routes under a ProxySettings' hedging and outlier policies."""

    def __init__(self, settings: proxy_config.ProxySettings, metrics: ProxyMetrics):
        self.settings = settings
        self.metrics = metrics

    async def call(self, route: Route, shard: int, method: str, request, deadline: float,
                   parse: Optional[Callable[[bytes], object]] = None,
                   payload: Optional[bytes] = None):
        """The first good answer of a replica of `shard` before `deadline` (time.monotonic()).

        `parse`, when given, makes the answer from the serialized message (and may refuse it
        with a ServingError, which fails that attempt); else the stub parses it. `payload`,
        when given, is what is sent: `request` serialized, but for what the proxy changes
        (forwarding.py); `request` is then read for its version and label only.

        Raises:
          ServingError: the client error of a replica, or the last failure when no replica
            answered in time.
        """
        name = route.spec.name
        tried = set()
        running: Dict[asyncio.Task, _Attempt] = {}
        last_error: Optional[ServingError] = None
        retry: Optional[Replica] = None  # the replica to ask once more (the module's rule)
        retried = False
        hedge = self.settings.hedge
        outlier = self.settings.outlier

        def launch(replica: Replica) -> None:
            now = time.monotonic()
            tried.add(replica)
            replica.begin_call()
            task = asyncio.ensure_future(_send(replica, method, request, deadline - now, parse,
                                               payload))
            delay = (hedge.delay(deadline - now, route.latency[shard].quantile(
                proxy_config.HEDGE_LATENCY_QUANTILE)) if hedge.enabled else deadline - now)
            running[task] = _Attempt(replica, now, now + delay)

        def count(replica: Replica, status: str) -> None:
            self.metrics.backend_count.labels(name, str(shard), replica.address, status).inc()

        try:
            while True:
                now = time.monotonic()
                if not running:
                    if now >= deadline:
                        raise last_error or ServingError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"shard {shard} of {name} did not answer within the deadline")
                    replica = route.pick(shard, tried)
                    if replica is None and retry is not None and not retried:
                        replica, retried = retry, True
                    if replica is None:
                        raise last_error or self._all_hung(route, shard, tried)
                    launch(replica)
                    continue
                newest = list(running.values())[-1]
                wake = min(deadline, newest.hedge_at)
                done, _ = await asyncio.wait(list(running), timeout=max(0.0, wake - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    now = time.monotonic()
                    if now >= deadline:
                        silent = ", ".join(a.replica.address for a in running.values())
                        for task, attempt in running.items():
                            task.cancel()
                            attempt.replica.record_failure(
                                outlier, started=attempt.started,
                                verdict_at=_verdict_at(route.spec, attempt.started, deadline))
                            count(attempt.replica, "DEADLINE_EXCEEDED")
                        running.clear()
                        raise last_error or ServingError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"shard {shard} of {name} did not answer within the deadline "
                            f"({silent})")
                    replica = route.pick(shard, tried, in_rotation_only=True)
                    if replica is None:
                        newest.hedge_at = deadline  # nobody left to hedge to
                        continue
                    for attempt in running.values():
                        attempt.hedged_past = True
                    self.metrics.hedge_count.labels(name, str(shard)).inc()
                    launch(replica)
                    continue
                for task in done:
                    attempt = running.pop(task)
                    replica = attempt.replica
                    error = task.exception()
                    if error is None:
                        replica.record_success(method in MODEL_METHODS)
                        route.latency[shard].add(time.monotonic() - attempt.started)
                        count(replica, "OK")
                        return task.result()
                    last_error = self._failed(route, shard, replica, error, request,
                                              attempt.started, method in MODEL_METHODS,
                                              _verdict_at(route.spec, attempt.started, deadline))
                    if (last_error.code == grpc.StatusCode.UNAVAILABLE
                            and isinstance(error, grpc.aio.AioRpcError)):
                        retry = replica
                    if last_error.code in CLIENT_ERRORS and not lacks_version(
                            last_error.code, last_error.message, request):
                        raise last_error
                    if not running and last_error.code not in FAILOVER_ERRORS and not (
                            lacks_version(last_error.code, last_error.message, request)):
                        raise last_error
        finally:
            # The error raised (or kept in a partial answer's list) holds this frame in its
            # traceback: without these references the frame, and the request it holds, are
            # freed with the call instead of waiting in a cycle for the next collection.
            last_error = error = None
            for task, attempt in running.items():
                task.cancel()
                if attempt.hedged_past:
                    attempt.replica.record_failure(outlier, started=attempt.started)
                    count(attempt.replica, "HEDGE_LOST")
                else:
                    attempt.replica.release_trial()

    def _all_hung(self, route: Route, shard: int, tried) -> ServingError:
        """The error of a shard whose replicas left to try are all ejected as hung: no call is
        sent."""
        name = route.spec.name
        ejected = route.hung_left(shard, tried)
        if not ejected:
            return ServingError(grpc.StatusCode.UNAVAILABLE, f"shard {shard} of {name} has no "
                                                             "replica")
        for replica in ejected:
            self.metrics.backend_count.labels(name, str(shard), replica.address,
                                              "EJECTED").inc()
        left = max(0.0, ejected[0].ejected_until - time.monotonic())
        return ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"shard {shard} of {name}: every replica is ejected after timing out "
            f"({', '.join(r.address for r in ejected)}); the next trial call is due in "
            f"{left:.1f} s")

    def _failed(self, route: Route, shard: int, replica: Replica, error: BaseException,
                request, started: float, runs_model: bool = True,
                verdict_at: Optional[float] = None) -> ServingError:
        """Records a failed attempt (sent at `started`; `runs_model`: of a MODEL_METHODS
        call; `verdict_at`: see _verdict_at) on its replica; the error to report for it."""
        name = route.spec.name
        if isinstance(error, ServingError):  # the answer came and was refused
            replica.release_trial()
            self.metrics.backend_count.labels(name, str(shard), replica.address,
                                              "REFUSED").inc()
            return error
        if not isinstance(error, grpc.aio.AioRpcError):
            replica.release_trial()
            return ServingError(grpc.StatusCode.INTERNAL,
                                f"shard {shard} of {name} ({replica.address}): {error!r}")
        code, details = error.code(), error.details() or error.code().name
        self.metrics.backend_count.labels(name, str(shard), replica.address, code.name).inc()
        if lacks_version(code, details, request):
            # Up, but without that version (a missing base path, only a broken version, a
            # label not rolled out there yet): the other replicas may have it.
            replica.record_success(runs_model)
            if code == grpc.StatusCode.NOT_FOUND and asks_latest(request):
                replica.mark_missing(route.spec.backend_model_name, self.settings.backoff_s)
            return ServingError(code, details)
        if code in CLIENT_ERRORS:
            replica.record_success(runs_model)
            return ServingError(code, details)
        if code == grpc.StatusCode.UNAVAILABLE:
            replica.record_failure(self.settings.outlier, immediate=True, started=started)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            replica.record_failure(self.settings.outlier, started=started, verdict_at=verdict_at)
        else:
            replica.release_trial()
        return ServingError(code, f"shard {shard} of {name} ({replica.address}): {details}")
