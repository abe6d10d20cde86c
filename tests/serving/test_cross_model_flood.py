"""A client that fires many calls at once on one connection, against one model, does not make
the server's event loop refuse them by the thousand while another model's client waits: the real
`dpsr serve --enable_batching` with two models (two batch keys), a flood of FLOOD_CALLS
concurrent calls on `flood`'s connection and a normal client on `dpsr`. Every assertion is a
count of statuses; the deadlines are generous guards, not speed requirements."""
import collections

import grpc
import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.model_server.server import MAX_STREAMS_PER_CONNECTION
from tests.support import serving_testing as st
from tests.support import toy_servable as ts
from tests.support.load import predict_once
from tests.support.server_metrics import METRICS_PATH, metrics
from tests.support.serving_testing import predict_request

FLOOD_CALLS = 1000
FLOOD_ROWS = 64  # x FLOOD_CALLS: 64,000 rows, over the default batch queue's 10,000
NORMAL_CALLS = 40
GENEROUS_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def server(toy_model_dir, spec, tmp_path_factory):
    work = tmp_path_factory.mktemp("cross_model_flood")
    ids, emb = ts.make_items(2000, spec.dim, seed=3)
    ts.write_toy_servable(str(work / "flood" / "1"), ids, emb, spec)
    (work / "models.config").write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in (("dpsr", toy_model_dir), ("flood", work / "flood"))) + "}\n")
    (work / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}')
    srv = process.start_model_server(
        model_config_file=str(work / "models.config"), rest=True, log_dir=str(work),
        flags=["--enable_batching", f"--monitoring_config_file={work / 'monitoring.config'}"])
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def _handled(srv, model: str) -> dict:
    """Status name -> calls of `model` the server answered."""
    return {dict(labels)["status"]: v for (name, labels), v in metrics(srv).items()
            if name == "dpsr_serving_request_count_total"
            and dict(labels).get("model_name") == model}


def test_a_flood_beyond_the_stream_limit_is_refused_before_any_handler_work(server):
    # Before: the server took all 1,000 calls at once and its handlers refused the ~860
    # beyond the batch queue UNAVAILABLE, each refusal ~1 ms of the one event loop (in the
    # hostile bench's 2,000-call flood, 62-354 normal calls of another model failed at their
    # 5 s deadline). Now a connection has at most MAX_STREAMS_PER_CONNECTION calls open
    # (8,192 rows, which the queue holds): gRPC's transport refuses the streams beyond it
    # (RST_STREAM REFUSED_STREAM, UNAVAILABLE to the client) without the event loop, and
    # every call the server's handlers see is answered.
    assert MAX_STREAMS_PER_CONNECTION * FLOOD_ROWS <= 10_000  # the default queue's rows
    channel = grpc.insecure_channel(server.address,
                                    options=[("grpc.use_local_subchannel_pool", 1)])
    flood = channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                                response_deserializer=None)
    payload = predict_request("flood", [f"drill {i}" for i in range(FLOOD_ROWS)],
                              k=10).SerializeToString()
    normal_stub = process.prediction_stub(server.address)
    predict_once(normal_stub, predict_request("dpsr", ["warm"], k=10), GENEROUS_DEADLINE_S)
    futures = [flood.future(payload, timeout=600) for _ in range(FLOOD_CALLS)]
    try:
        normal = [predict_once(normal_stub, predict_request("dpsr", [f"normal {i}"], k=10),
                               GENEROUS_DEADLINE_S).code for i in range(NORMAL_CALLS)]
        flood_codes = collections.Counter(_code(f) for f in futures)
    finally:
        for f in futures:
            f.cancel()
        channel.close()
    assert normal == ["OK"] * NORMAL_CALLS
    handled = _handled(server, "flood")
    assert set(flood_codes) <= {"OK", "UNAVAILABLE"}, flood_codes
    assert flood_codes["OK"] >= MAX_STREAMS_PER_CONNECTION, flood_codes
    # The server's handlers answered every flood call they saw, and refused none.
    assert handled == {"OK": flood_codes["OK"]}, (handled, flood_codes)


def _code(future) -> str:
    try:
        future.result()
    except grpc.RpcError as e:
        return e.code().name
    return "OK"
