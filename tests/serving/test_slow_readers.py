"""Clients that never read, against `dpsr serve` with its default budgets of unsent answers:
the server's memory stays bounded and a client that reads still gets its answers. A real
server, a raw HTTP/2 client (h2) that opens streams with a zero flow-control window, and the
real gRPC client; every assertion is a count (bytes of RSS, calls, statuses)."""
import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from tests.support import serving_testing as st
from tests.support.load import predict_once
from tests.support.server_metrics import (METRICS_PATH, all_placed, metrics,
                                          open_zero_window_streams, quiet, value)
from tests.support.serving_testing import predict_request

SLOW_READERS = 8
STREAMS_PER_READER = 100
SLOW_ANSWER_ROWS = 64  # x 240 items: about 0.29 MB serialized
RSS_GROWTH_BOUND = 150 << 20  # the serving bar under misbehaving clients


@pytest.fixture(scope="module", params=[False, True], ids=["unbatched", "batching"])
def server(request, toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("slow_readers")
    (work / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}')
    srv = process.start_model_server(
        toy_model_dir, model_name="dpsr", rest=True, log_dir=str(work), flags=[
            f"--monitoring_config_file={work / 'monitoring.config'}", "--max_k=300",
            # The Python server's own budgets, which hold the readers when it takes the port
            # itself; behind the native front end, the front end holds them
            # (test_native_front_end.py) and only a few calls ever reach these budgets.
            "--front_end=python"]
        + ["--enable_batching"] * request.param)
    srv.batching = request.param
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def test_zero_window_readers_at_the_default_budgets_leave_memory_bounded(server):
    # Before: with batching on, nothing held a client back (its calls were computed, and
    # dropped once over the total budget: +360 MiB in the hostile bench). Unbatched, the default budgets (64 MiB per client, 256 MiB in all, counted in serialized
    # bytes) let 8 such connections hold ~230 MB of answers: +1.3 GiB of RSS (a held answer
    # costs ~6x its serialized bytes, and 800 calls in flight ~32 MiB). At 4 MiB / 8 MiB: about
    # 10 MB held, +60-96 MiB.
    request = predict_request("dpsr", [f"phone {i}" for i in range(SLOW_ANSWER_ROWS)], k=300)
    readers, before, refused_before, rss_before = open_zero_window_streams(
        server, request, SLOW_READERS, STREAMS_PER_READER)
    try:
        if server.batching:  # held-back calls wait in the batch queue (no gauge shows it)
            placed = quiet(server, "dpsr")
        else:
            placed = all_placed(server, "dpsr", before, refused_before,
                                SLOW_READERS * STREAMS_PER_READER)
        held = value(metrics(server), "dpsr_serving_unsent_response_bytes")
        growth = st.rss_bytes(server.proc.pid) - rss_before
        assert held > 0, placed  # answers wait for the readers
        # With batching, the calls that arrive before any answer is held are computed in
        # 1,000-row batches whose freed tensors glibc keeps: 83-144 MiB in 13 runs, until the
        # server trimmed its heap (heap_trim.py): 63-89 MiB beside two training jobs, against
        # 119-134 MiB with --heap_trim_interval_seconds=0 in the same runs.
        assert growth < RSS_GROWTH_BOUND, (f"RSS grew {growth / 2**20:.0f} MiB holding "
                                           f"{held:.0f} bytes of answers; {placed}")
        # A client that reads gets the same answer, one larger than a client's budget of
        # unsent answers (1,000 rows x 240 items, ~4.6 MB) and small ones, all OK.
        huge = predict_request("dpsr", [f"case {i}" for i in range(1000)], k=300)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            server.address, options=[("grpc.max_receive_message_length", 64 << 20)]))
        calls = [predict_once(stub, req, 120) for i in range(10) for req in
                 (request, huge, predict_request("dpsr", [f"drill {i}"], k=10))]
        codes = [c.code if c.code == "OK" else f"{c.code} {c.details[:150]}" for c in calls]
        assert codes == ["OK"] * 30
    finally:
        for reader in readers:
            reader.close()
