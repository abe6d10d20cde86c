"""The proxy's framed calls to a local shard (dpsr_tf/serving/proxy/framed_shard.py) against a
frame server: the scripted servicer behind the proxy's own framed-call server
(test_proxy_framed_calls.py tests that one against hand-built frames), and a raw socket for
answers that break the protocol. What the caller gets (bytes, or gRPC's error with its code,
details and trailers) and what the server sees (client, deadline, cancellation). Against a real
`dpsr serve --framed_predict_socket`: test_proxy.py."""
import asyncio
import socket
import threading

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import frames
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY
from dpsr_tf.serving.proxy.framed_calls import FramedProxyCalls
from dpsr_tf.serving.proxy.framed_shard import FramedShardClient
from tests.serving.test_proxy_framed_calls import _Servicer


def _request(model):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    return request


def _run(tmp_path, scenario, connections=1):
    async def main():
        servicer = _Servicer()
        path = str(tmp_path / "shard.sock")
        server = FramedProxyCalls(servicer, path, 1 << 20)
        await server.start()
        client = FramedShardClient(path, connections)
        try:
            return await asyncio.wait_for(scenario(servicer, server, client), 30)
        finally:
            client.close()
            await server.stop()
    return asyncio.run(main())


def test_answers_are_the_servers_bytes_matched_to_their_calls(tmp_path):
    async def scenario(servicer, server, client):
        names = [f"m{i}" for i in range(40)]
        answers = await asyncio.gather(*(
            client.predict(_request(n), timeout=10, metadata=((CLIENT_METADATA_KEY, f"c{i}"),))
            for i, n in enumerate(names)))
        got = [predict_pb2.PredictResponse.FromString(a).model_spec.name for a in answers]
        assert got == names
        assert sorted(peer for _, peer, _, _ in servicer.seen) == sorted(
            f"c{i}" for i in range(40))
        assert all(0 < remaining <= 10 for *_, remaining in servicer.seen)
        assert client.calls == 40
    _run(tmp_path, scenario, connections=3)


def test_a_server_error_is_grpcs_error_with_its_trailers(tmp_path):
    async def scenario(servicer, server, client):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.predict(_request("abort"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "all 2 shards failed"
        assert tuple(e.value.trailing_metadata()) == (("dpsr-partial", "true"),)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.predict(_request("bug"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNKNOWN
        # The connection still serves.
        answer = await client.predict(_request("after"), timeout=10, metadata=None)
        assert predict_pb2.PredictResponse.FromString(answer).model_spec.name == "after"
        assert servicer.seen[-1][1] == ""  # no client named
        assert servicer.seen[-1][3] is not None
    _run(tmp_path, scenario)


def test_the_deadline_ends_the_call_and_cancels_it_on_the_server(tmp_path):
    async def scenario(servicer, server, client):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.predict(_request("wait"), timeout=0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        while not servicer.cancelled:  # the cancel frame reaches the server's task
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.predict(_request("x"), timeout=0)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answer = await client.predict(_request("next"), timeout=10)
        assert predict_pb2.PredictResponse.FromString(answer).model_spec.name == "next"
        return servicer.cancelled
    assert _run(tmp_path, scenario) == 1


def test_a_cancelled_caller_cancels_the_call_on_the_server(tmp_path):
    async def scenario(servicer, server, client):
        call = asyncio.ensure_future(client.predict(_request("wait"), timeout=10))
        await servicer.started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while not servicer.cancelled:
            await asyncio.sleep(0.01)
        return servicer.cancelled
    assert _run(tmp_path, scenario) == 1


def test_a_server_that_goes_away_fails_its_calls_unavailable(tmp_path):
    async def scenario(servicer, server, client):
        call = asyncio.ensure_future(client.predict(_request("wait"), timeout=10))
        await servicer.started.wait()
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "connection ended" in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:  # nobody listens now
            await client.predict(_request("x"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot connect" in e.value.details()
    _run(tmp_path, scenario)


def _raw_server(path, answer_for):
    """A server that answers each request frame with answer_for(call id) (raw bytes)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while True:
                    head = conn.recv(frames.HEAD.size, socket.MSG_WAITALL)
                    if len(head) < frames.HEAD.size:
                        break
                    _, call_id, size = frames.body_size(head, 1 << 20)
                    if size:
                        conn.recv(size, socket.MSG_WAITALL)
                    conn.sendall(answer_for(call_id))
    threading.Thread(target=serve, daemon=True).start()
    return listener


@pytest.mark.parametrize("bad", ["not_an_answer", "trailers_past_the_end", "huge"])
def test_an_answer_that_breaks_the_protocol_fails_unavailable_and_reconnects(tmp_path, bad):
    path = str(tmp_path / "raw.sock")
    served = []

    def answer_for(call_id):
        served.append(call_id)
        if len(served) > 1:  # the next connection answers well
            return frames.answer_frame(call_id, grpc.StatusCode.OK, "", b"ok")
        if bad == "not_an_answer":
            return frames.request_frame(call_id, -1, "", b"")
        if bad == "huge":
            return frames.HEAD.pack(2 ** 31, frames.ANSWER, call_id)
        frame = bytearray(frames.answer_frame(call_id, grpc.StatusCode.OK, "", b"",
                                              [("k", "v")]))
        frame[16 + 8:16 + 12] = (1000).to_bytes(4, "little")  # trailers' length past the end
        return bytes(frame)

    listener = _raw_server(path, answer_for)

    async def main():
        client = FramedShardClient(path)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await client.predict(_request("x"), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "broke the frame protocol" in e.value.details()
            assert await client.predict(_request("y"), timeout=10) == b"ok"
        finally:
            client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        listener.close()
    assert len(served) == 2
