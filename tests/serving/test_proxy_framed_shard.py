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
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY
from dpsr_tf.serving.model_server.api.framed_predict import FramedPredictServer
from dpsr_tf.serving.proxy.framed_calls import FramedProxyCalls
from dpsr_tf.serving.proxy.framed_shard import FramedShardClient
from dpsr_tf.serving.proxy.routing import Replica
from tests.serving.test_framed_predict import _FakeServicer as _ModelServicer
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


async def _held_call(servicer, client):
    """A call the scripted servicer holds until its `release` (started, not answered)."""
    call = asyncio.ensure_future(client.predict(_request("wait"), timeout=10))
    await servicer.started.wait()
    return call


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
        call = await _held_call(servicer, client)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while not servicer.cancelled:
            await asyncio.sleep(0.01)
        return servicer.cancelled
    assert _run(tmp_path, scenario) == 1


def test_a_server_that_goes_away_fails_its_calls_unavailable(tmp_path):
    async def scenario(servicer, server, client):
        call = await _held_call(servicer, client)
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


def _unix_server(path, handle):
    """A listening UNIX socket at `path` whose accepted connections go to handle(conn), one
    at a time on a thread of its own; close the returned listener to stop it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                handle(conn)
    threading.Thread(target=serve, daemon=True).start()
    return listener


def _raw_server(path, answer_for):
    """A server that answers each request frame with answer_for(call id) (raw bytes)."""
    def answer_frames(conn):
        while True:
            head = conn.recv(frames.HEAD.size, socket.MSG_WAITALL)
            if len(head) < frames.HEAD.size:
                return
            _, call_id, size = frames.body_size(head, 1 << 20)
            if size:
                conn.recv(size, socket.MSG_WAITALL)
            conn.sendall(answer_for(call_id))
    return _unix_server(path, answer_frames)


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


def test_against_the_model_servers_shared_socket(tmp_path):
    """The client and `dpsr serve`'s own frame server (framed_predict.py, shared=True) with a
    scripted servicer: an answer, an error, a request over the server's limit, and a deadline
    whose cancel frame drops the run."""
    servicer = _ModelServicer()
    path = str(tmp_path / "serve.sock")
    server = FramedPredictServer(servicer, path, 1 << 10, shared=True)
    server.start()

    async def main():
        client = FramedShardClient(path)
        try:
            call = asyncio.ensure_future(client.predict(
                _request("a"), timeout=10, metadata=((CLIENT_METADATA_KEY, "peer-7"),)))
            while not servicer.runs:
                await asyncio.sleep(0.01)
            request, timeout, key, future = servicer.runs[0]
            assert request.model_spec.name == "a" and key == ("framed", "peer-7")
            assert 0 < timeout <= 10
            future.set_result(b"answer a")
            assert await call == b"answer a"
            call = asyncio.ensure_future(client.predict(_request("b"), timeout=10))
            while len(servicer.runs) < 2:
                await asyncio.sleep(0.01)
            servicer.runs[1][3].set_exception(
                ServingError(grpc.StatusCode.FAILED_PRECONDITION, "no such signature"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert (e.value.code(), e.value.details()) == (
                grpc.StatusCode.FAILED_PRECONDITION, "no such signature")
            big = _request("c" * 2000)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await client.predict(big, timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.value.details() == (
                f"Received message larger than max ({big.ByteSize()} vs. 1024)")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await client.predict(_request("d"), timeout=0.2)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            while not servicer.runs[-1][3].cancelled():  # the cancel frame reached the run
                await asyncio.sleep(0.01)
            assert len(servicer.runs) == 3  # a, b, d: c never reached the servicer
        finally:
            client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        server.stop()


def test_calls_on_a_connection_the_server_ends_at_once_fail_unavailable_not_late(tmp_path):
    """Calls that waited for the same connect, and find it ended when their turn comes, fail
    at once as UNAVAILABLE (not at their deadline)."""
    path = str(tmp_path / "closing.sock")
    listener = _unix_server(path, lambda conn: None)  # closed as soon as it is accepted

    async def main():
        client = FramedShardClient(path, connections=2)
        try:
            results = await asyncio.gather(
                *(client.predict(_request(f"m{i}"), timeout=60) for i in range(50)),
                return_exceptions=True)
        finally:
            client.close()
        return [r.code() for r in results]

    try:
        codes = asyncio.run(asyncio.wait_for(main(), 30))  # far below the calls' 60 s
    finally:
        listener.close()
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 50


def test_a_closed_client_answers_its_calls_in_flight_and_takes_no_more(tmp_path):
    """close() (a reload that moves the replica): the call in flight still gets its answer,
    a new call fails UNAVAILABLE at once, and the connection closes once it is idle."""
    async def scenario(servicer, server, client):
        call = await _held_call(servicer, client)
        client.close()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.predict(_request("new"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        servicer.release.set()
        answer = await call
        assert predict_pb2.PredictResponse.FromString(answer).model_spec.name == "wait"
        while server.connections:  # the proxy-side connection closed, so the server's did
            await asyncio.sleep(0.01)
        assert servicer.cancelled == 0
    _run(tmp_path, scenario)


def test_a_replica_whose_socket_a_reload_changes_retires_the_old_client(tmp_path):
    async def main():
        replica = Replica("127.0.0.1:1", framed_socket=str(tmp_path / "a.sock"))
        old = replica.framed
        replica.use_framed_socket(str(tmp_path / "a.sock"))  # unchanged: the same client
        assert replica.framed is old
        replica.use_framed_socket(str(tmp_path / "b.sock"))
        assert replica.framed.path == str(tmp_path / "b.sock") and replica.framed is not old
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await old.predict(_request("x"), timeout=10)
        assert "no longer this replica's" in e.value.details()
        replica.use_framed_socket("")
        assert replica.framed is None
        await replica.close()
    asyncio.run(main())
