"""Counts read from a real `dpsr serve`'s Prometheus page: runs started, queued and dropped
per model, calls refused for unsent answers; and waits until they settle (on progress, never
on a wall-clock window: tests/support/waiting.py)."""
import time

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import capacity
from tests.support import serving_testing as st
from tests.support import waiting
from tests.support.raw_http2 import RawHttp2

METRICS_PATH = "/monitoring/prometheus/metrics"
RUN_THREADS = capacity.run_threads()  # the default --num_run_threads on this machine


def metrics(srv) -> dict:
    """{(sample name, sorted label items): value} of the server's Prometheus page."""
    return {(name, tuple(sorted(labels.items()))): value
            for name, labels, value in st.prometheus_samples(srv.rest_url + METRICS_PATH)}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def runs(srv, model: str) -> dict:
    m = metrics(srv)
    dropped = {reason: value(m, "dpsr_serving_requests_dropped_total", model_name=model,
                             reason=reason)
               for reason in ("deadline_exceeded", "cancelled", "queue_full")}
    handled = sum(v for (name, labels), v in m.items()
                  if name == "dpsr_serving_request_count_total"
                  and ("model_name", model) in labels)
    return dict(started=value(m, "dpsr_serving_unbatched_runs_started_total",
                              model_name=model),
                queued=value(m, "dpsr_serving_queued_requests"), handled=handled, **dropped)


def settled(srv, model: str, timeout: float = 300.0) -> dict:
    """The counts once nothing waits in the queue and no request of `model` started or was
    dropped for a few polls (this only waits: nothing asserts how long it took)."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline:
        counts = runs(srv, model)
        same = same + 1 if counts == last and counts["queued"] == 0 else 0
        if same == 3:
            break
        last = counts
        time.sleep(0.3)
    return counts


def refused(srv) -> float:
    """Calls answered RESOURCE_EXHAUSTED for unsent answers (at arrival, or a ready answer
    dropped), all clients and models."""
    return sum(v for (name, _), v in metrics(srv).items()
               if name == "dpsr_serving_calls_refused_total")


def all_placed(srv, model: str, before: dict, refused_before: float, sent: int) -> dict:
    """The counts once each of `sent` calls of `model` is queued, answered or refused, and no
    run is in progress (every started run answered), stable for a few polls. It waits on
    progress (tests/support/waiting.py): a slow machine only takes longer."""
    state = {"last": None, "same": 0}

    def placed():
        counts = delta(runs(srv, model), before)
        accounted = counts["queued"] + counts["handled"] + refused(srv) - refused_before
        done = accounted >= sent and counts["handled"] >= counts["started"]
        state["same"] = state["same"] + 1 if done and counts == state["last"] else 0
        state["last"] = counts
        return counts if state["same"] >= 3 else None

    return waiting.wait_until(placed, f"{sent} calls of {model} placed",
                              progress=lambda: state["last"], poll_s=0.3)


def warm_run_threads(srv, request, run_threads: int = RUN_THREADS) -> None:
    """Sends `request` as 2 x `run_threads` concurrent calls (and reads the answers), so that
    every run thread has computed such an answer once: its first-use memory (allocator arenas,
    TensorFlow scratch) is then part of the baseline, not of a test's growth.

    Two calls on each of `run_threads` connections: a connection's runs are bounded per
    client, and the queue delay control refuses a connection's call only after an earlier
    call of it found its queue standing above the target, which needs a third call. Sixteen
    calls on one connection were refused RESOURCE_EXHAUSTED (overloaded) on a machine loaded
    enough that their arrivals spread over more than the interval."""
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(srv.address, options=own_connection)
                for _ in range(run_threads)]
    try:
        futures = [prediction_service_pb2_grpc.PredictionServiceStub(channel)
                   .Predict.future(request, timeout=120)
                   for channel in channels for _ in range(2)]
        for f in futures:
            f.result()
    finally:
        for channel in channels:
            channel.close()


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def quiet(srv, model: str, polls: int = 5, poll_s: float = 0.5) -> dict:
    """The counts once the calls of `model` answered (and refused for unsent answers) have
    not changed for `polls` polls in a row: for work a metric does not show queued (the
    batch queue). It waits on progress; a slow machine only takes longer."""
    state = {"last": None, "same": 0}

    def still():
        counts = runs(srv, model)
        counts["refused"] = refused(srv)
        state["same"] = state["same"] + 1 if counts == state["last"] else 0
        state["last"] = counts
        return counts if state["same"] >= polls else None

    return waiting.wait_until(still, f"the calls of {model} to settle",
                              progress=lambda: state["last"], poll_s=poll_s)


def open_zero_window_streams(srv, request, connections: int, streams_per_connection: int,
                             model: str = "dpsr"):
    """Warms the run threads with `request`, then opens `streams_per_connection` Predict
    streams of it on each of `connections` raw HTTP/2 connections that never read.

    Returns (readers, runs before, refused before, RSS bytes before); the caller closes the
    readers (they are closed here if opening fails)."""
    warm_run_threads(srv, request)
    message = request.SerializeToString()
    before, refused_before = runs(srv, model), refused(srv)
    rss_before = st.rss_bytes(srv.proc.pid)
    readers = [RawHttp2(srv.grpc_port) for _ in range(connections)]
    try:
        for reader in readers:
            for _ in range(streams_per_connection):
                reader.open_predict(message)
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers, before, refused_before, rss_before
