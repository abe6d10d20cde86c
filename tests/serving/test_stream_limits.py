"""One client connection has at most --max_streams_per_connection calls open on the model
server and on the proxy (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): its gRPC library holds the
rest, so a flood of twice the limit on one connection waits at its source, and every one of
its calls is still answered OK (no transport refusal, no per-client queue refusal). Real
`dpsr serve` and `dpsr proxy` processes, the real gRPC client, and a raw HTTP/2 client (h2) to
read the settings the servers advertise. Assertions are counts and bounds, never times."""
import collections
import time

import grpc
import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import capacity, stream_limits
from dpsr_tf.serving.model_server.server import ServerOptions, server_arguments
from tests.support import waiting
from tests.support.raw_http2 import RawHttp2
from tests.support.server_metrics import METRICS_PATH, runs as _runs
from tests.support.serving_testing import PREDICT_METHOD, predict_request

# The servers here take their port with the native front end (the default): 256 per core.
LIMIT = capacity.streams_per_connection(native_front_end=True)
# Over the limit, and over the per-client bounds (256) that refused before.
FLOOD = max(1000, 2 * LIMIT)
BY_ARGUMENT = 64  # the limit of a server that is given it as --grpc_channel_arguments


def test_server_arguments():
    assert stream_limits.server_arguments(0) == []
    assert dict(stream_limits.server_arguments(7)) == {"grpc.max_concurrent_streams": 7,
                                                       "grpc.http.overload_protection": 0}
    with pytest.raises(ValueError, match="max_streams_per_connection is -1"):
        stream_limits.server_arguments(-1)


def test_a_limit_from_channel_arguments_also_turns_the_refusals_off():
    limit, protection = "grpc.max_concurrent_streams", "grpc.http.overload_protection"
    assert stream_limits.without_refusals({limit: 64, "x": 1}) == {limit: 64, "x": 1,
                                                                   protection: 0}
    assert stream_limits.without_refusals({limit: 64, protection: 1}) == {limit: 64,
                                                                          protection: 1}
    for unlimited in ({}, {limit: 0}, {"x": 1}):
        assert stream_limits.without_refusals(unlimited) == unlimited
    # The model server's final arguments: --max_streams_per_connection=0 with the limit given
    # as a channel argument, as an operator used to TF Serving's flags would.
    args = dict(server_arguments(ServerOptions(max_streams_per_connection=0,
                                               grpc_channel_arguments=((limit, 64),))))
    assert args[limit] == 64 and args[protection] == 0


@pytest.fixture(scope="module")
def servers(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("stream_limits")
    (work / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    # One run thread: the flood's calls pile up in the server's queue as fast as they arrive.
    # The queue delay control off: it refuses part of such a flood on one connection as
    # overload (test_native_front_end.py); here the stream limit alone holds the flood.
    monitoring = f"--monitoring_config_file={work / 'monitoring.config'}"
    no_delay_control = "--front_end_queue_target_ms=0"
    server = process.model_server_process(toy_model_dir, model_name="dpsr", rest=True,
                                          log_dir=str(work),
                                          flags=["--num_run_threads=1", monitoring,
                                                 no_delay_control])
    unlimited = process.model_server_process(toy_model_dir, model_name="dpsr",
                                             log_dir=str(work), name="unlimited",
                                             flags=["--max_streams_per_connection=0"])
    by_argument = process.model_server_process(
        toy_model_dir, model_name="dpsr", log_dir=str(work), name="by_argument",
        flags=["--max_streams_per_connection=0", no_delay_control,
               f"--grpc_channel_arguments=grpc.max_concurrent_streams={BY_ARGUMENT}"])
    process.start_all([server, unlimited, by_argument])
    proxy = process.start_proxy({"dpsr": ((server.address,),)}, log_dir=str(work),
                                deadline_ms=120_000, flags=[no_delay_control])
    yield server, unlimited, proxy, by_argument
    for p in (proxy, server, unlimited, by_argument):
        assert p.stop() == 0, p.log_tail()


def _advertised_limit(port: int):
    """MAX_CONCURRENT_STREAMS in the server's first SETTINGS frame (None: not sent)."""
    import h2.events  # pylint: disable=g-import-not-at-top
    import h2.settings  # pylint: disable=g-import-not-at-top
    client = RawHttp2(port, window=1 << 16)
    try:
        for _ in range(20):
            client.pump()
            for event in client.events:
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(
                        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                    return None if changed is None else changed.new_value
        raise AssertionError(f"no SETTINGS frame from port {port}: {client.events}")
    finally:
        client.close()


def test_the_servers_advertise_the_limit(servers):
    server, unlimited, proxy, by_argument = servers
    assert _advertised_limit(server.grpc_port) == LIMIT
    assert _advertised_limit(by_argument.grpc_port) == BY_ARGUMENT
    assert _advertised_limit(proxy.grpc_port) == LIMIT
    # --max_streams_per_connection=0: gRPC's default, no practical limit: grpcio's core
    # advertises 2**31-1, the native front end's (Debian's gRPC 1.51) sends none, which HTTP/2
    # reads as unlimited.
    assert _advertised_limit(unlimited.grpc_port) in (2**31 - 1, None)


def _flood(address: str, queued=None) -> tuple:
    """FLOOD calls fired at once on one new connection: (Counter of their status names, the
    largest value of `queued()` polled while they were out, 0 when no `queued` is given)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                               response_deserializer=None)
    payload = predict_request("dpsr", [f"cordless drill {i}" for i in range(8)],
                              k=10).SerializeToString()
    call(payload, timeout=120)  # connected, and the server's SETTINGS received
    futures = [call.future(payload, timeout=120) for _ in range(FLOOD)]
    most_queued = 0
    if queued is not None:
        while not all(f.done() for f in futures):
            most_queued = max(most_queued, queued())
            time.sleep(0.01)  # a bound on the polling, not a timing assumption
    codes = collections.Counter()
    for f in futures:
        try:
            f.result()
            codes["OK"] += 1
        except grpc.RpcError as e:
            codes[f"{e.code().name}: {e.details()}"] += 1
    channel.close()
    return codes, most_queued


def test_a_flood_on_one_connection_waits_at_its_source_and_is_all_answered(servers):
    # Before: all 1,000 calls reached the server at once; beyond its per-client queue (256)
    # they were refused RESOURCE_EXHAUSTED, and with a stream limit under gRPC's default
    # overload protection, about half were refused by the transport (UNAVAILABLE,
    # RST_STREAM REFUSED_STREAM).
    server = servers[0]
    codes, most_queued = _flood(server.address, lambda: _runs(server, "dpsr")["queued"])
    assert codes == {"OK": FLOOD}, codes
    # At most LIMIT calls of the connection were in the server at any time (one running).
    assert 0 < most_queued <= LIMIT, most_queued


def test_a_flood_through_the_proxy_is_all_answered(servers):
    # Before: beyond --max_concurrent_calls_per_peer (256) the proxy refused the calls
    # RESOURCE_EXHAUSTED; now the connection never has more than LIMIT open.
    proxy = servers[2]
    codes, _ = _flood(proxy.address)
    assert codes == {"OK": FLOOD}, codes


def test_a_flood_is_all_answered_under_a_limit_given_as_a_channel_argument(servers):
    # Before: the limit came without turning gRPC's overload protection off, and the
    # transport refused about half of the flood UNAVAILABLE (REFUSED_STREAM).
    codes, _ = _flood(servers[3].address)
    assert codes == {"OK": FLOOD}, codes


def test_after_the_floods_other_clients_are_served(servers):
    server, _, proxy, _ = servers
    for address in (server.address, proxy.address):
        stub = process.prediction_stub(address)
        response = stub.Predict(predict_request("dpsr", ["cordless drill"], k=5), timeout=60)
        assert len(response.outputs["item_ids"].string_val) == 5
    waiting.wait_until(lambda: _runs(server, "dpsr")["queued"] == 0, "the queue drains")
