"""Several `dpsr serve` processes on one port (SO_REUSEPORT, asked for with
--grpc_channel_arguments=grpc.so_reuseport=1), and a user's channel argument replacing a default."""
import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.model_server.server import ServerOptions, server_arguments
from tests.support.serving_testing import outputs, predict_request

REUSE = "--grpc_channel_arguments=grpc.so_reuseport=1"


def test_user_arguments_replace_the_defaults():
    args = server_arguments(ServerOptions(
        max_receive_message_bytes=1000,
        grpc_channel_arguments=(("grpc.so_reuseport", 1), ("grpc.max_connection_age_ms", 5),
                                ("grpc.max_concurrent_streams", 9))))
    assert sorted(args) == sorted([("grpc.max_receive_message_length", 1000),
                                   ("grpc.max_send_message_length", -1),
                                   ("grpc.so_reuseport", 1),
                                   ("grpc.max_connection_age_ms", 5),
                                   ("grpc.max_concurrent_streams", 9),
                                   ("grpc.http.overload_protection", 0),
                                   ("grpc.compression_enabled_algorithms_bitset", 1)])
    defaults = dict(server_arguments(ServerOptions()))
    assert defaults["grpc.so_reuseport"] == 0
    assert defaults["grpc.max_concurrent_streams"] == 128
    assert "grpc.max_concurrent_streams" not in dict(server_arguments(ServerOptions(
        max_streams_per_connection=0)))


def _ask(address, query):
    """One Predict on a new TCP connection (local subchannel pool: not shared)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return outputs(stub.Predict(predict_request("dpsr", [query], k=5), timeout=30))
    finally:
        channel.close()


def test_two_processes_share_a_port_and_either_serves_alone(toy_model_dir, tmp_path, queries):
    port = process.free_port()
    servers = [process.model_server_process(toy_model_dir, "dpsr", flags=[REUSE], port=port,
                                            name=f"shared{i}", log_dir=str(tmp_path))
               for i in range(2)]
    process.start_all(servers)
    address = servers[0].address
    expected = [_ask(address, q)["item_ids"].tolist() for q in queries]
    for _ in range(3):  # new connections land on either process; the answers are the same
        assert [_ask(address, q)["item_ids"].tolist() for q in queries] == expected
    servers[0].stop()
    assert servers[1].alive()
    assert [_ask(address, q)["item_ids"].tolist() for q in queries] == expected
    servers[1].stop()


def test_a_taken_port_is_refused_without_reuseport(toy_model_dir, tmp_path):
    port = process.free_port()
    first = process.model_server_process(toy_model_dir, "dpsr", port=port, name="first",
                                         log_dir=str(tmp_path)).start()
    try:
        second = process.model_server_process(toy_model_dir, "dpsr", port=port, name="second",
                                              log_dir=str(tmp_path))
        with pytest.raises(RuntimeError, match="cannot bind gRPC to 127.0.0.1"):
            second.start()
        assert first.alive()
    finally:
        first.stop()


def test_proxy_with_several_connections_in_front_of_a_shared_port(toy_model_dir, tmp_path,
                                                                     queries):
    port = process.free_port()
    servers = [process.model_server_process(toy_model_dir, "dpsr", flags=[REUSE], port=port,
                                            name=f"backend{i}", log_dir=str(tmp_path))
               for i in range(2)]
    process.start_all(servers)
    try:
        direct = [_ask(servers[0].address, q) for q in queries]
        with process.start_proxy({"dpsr": ((servers[0].address,),)}, log_dir=str(tmp_path),
                                 flags=["--backend_connections=4"]) as proxy:
            for _ in range(2):
                for q, want in zip(queries, direct):
                    got = _ask(proxy.address, q)
                    assert got["item_ids"].tolist() == want["item_ids"].tolist()
                    assert got["scores"].tolist() == want["scores"].tolist()
    finally:
        for s in servers:
            s.stop()


def test_proxy_refuses_zero_backend_connections(tmp_path):
    proxy = process.proxy_process({"dpsr": (("127.0.0.1:1",),)}, log_dir=str(tmp_path),
                                  flags=["--backend_connections=0"])
    with pytest.raises(RuntimeError, match="--backend_connections is 0; it must be >= 1"):
        proxy.start()
