"""The proxy's framed Predict calls (dpsr_tf/serving/proxy/framed_calls.py) against a scripted
servicer: what the servicer sees of a call (client, deadline), what the front end gets back
(status, message, trailing metadata, answer bytes), cancellation at every point, and frames that
break the protocol. The proxy behind a real front end: test_native_front_end.py."""
import asyncio
import struct

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import frames as protocol
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY
from dpsr_tf.serving.proxy.framed_calls import FramedProxyCalls
from tests.support import serving_testing as st


class _Servicer:
    """Predict as the test scripts it per model name; records each call's context."""

    def __init__(self):
        self.seen = []      # (model name, peer, metadata, time remaining)
        self.contexts = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0
        self.done_callbacks = 0

    async def Predict(self, request, context):  # pylint: disable=invalid-name
        assert bytes(request.data) == request.message.SerializeToString()  # bytes kept
        name = request.message.model_spec.name
        self.seen.append((name, context.peer(), tuple(context.invocation_metadata()),
                          context.time_remaining()))
        self.contexts.append(context)
        context.add_done_callback(self._count_done)
        if name == "abort":
            context.set_trailing_metadata((("dpsr-partial", "true"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "all 2 shards failed")
        if name == "bug":
            raise KeyError("a bug")
        if name == "wait":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        context.set_trailing_metadata((("dpsr-partial", "false"), ("dpsr-missing-shards", "")))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = "answered"
        return response

    def _count_done(self, _context):
        self.done_callbacks += 1


_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _request(call_id, model, client=b"ipv4:10.0.0.5:40000", deadline_us=-1, payload=None):
    if payload is None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        payload = request.SerializeToString()
    body = struct.pack("<qI", deadline_us, len(client)) + client + payload
    return protocol.HEAD.pack(12 + len(body), protocol.REQUEST, call_id) + body


async def _answer(reader):
    """(call id, status name, message, trailers, answer bytes) of the next answer frame."""
    length, kind, call_id = protocol.HEAD.unpack(await reader.readexactly(protocol.HEAD.size))
    assert kind == protocol.ANSWER
    code, message, trailers, payload = protocol.parse_answer(
        await reader.readexactly(length - 12))
    return call_id, _NAMES[code], message, trailers, payload


def _run(tmp_path, scenario):
    async def main():
        servicer = _Servicer()
        server = FramedProxyCalls(servicer, str(tmp_path / "p.sock"), 1 << 20)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "p.sock"))
        try:
            return await asyncio.wait_for(scenario(servicer, server, reader, writer), 30)
        finally:
            writer.close()
            await server.stop()
    return asyncio.run(main())


def test_an_answer_carries_the_servicers_response_and_trailers(tmp_path):
    async def scenario(servicer, server, reader, writer):
        writer.write(_request(7, "dpsr", deadline_us=2_500_000))
        call_id, code, message, trailers, payload = await _answer(reader)
        assert (call_id, code, message) == (7, "OK", "")
        assert trailers == [("dpsr-partial", "false"), ("dpsr-missing-shards", "")]
        response = predict_pb2.PredictResponse.FromString(payload)
        assert (response.model_spec.name, response.model_spec.signature_name) == (
            "dpsr", "answered")
        name, peer, metadata, remaining = servicer.seen[0]
        assert (name, peer) == ("dpsr", "ipv4:10.0.0.5:40000")
        assert metadata == ((CLIENT_METADATA_KEY, "ipv4:10.0.0.5:40000"),)
        assert 2.0 < remaining <= 2.5
        assert servicer.done_callbacks == 1 and server.calls == 1
        # No deadline: none remains (grpc.aio's time_remaining of a call without one is None).
        writer.write(_request(8, "dpsr"))
        assert (await _answer(reader))[:2] == (8, "OK")
        assert servicer.seen[1][3] is None
    _run(tmp_path, scenario)


def test_errors_are_answered_with_their_status(tmp_path):
    async def scenario(servicer, server, reader, writer):
        writer.write(_request(1, "abort"))
        assert await _answer(reader) == (1, "UNAVAILABLE", "all 2 shards failed",
                                         [("dpsr-partial", "true")], b"")
        writer.write(_request(2, "bug"))
        call_id, code, message, _, payload = await _answer(reader)
        assert (call_id, code, payload) == (2, "UNKNOWN", b"")
        assert "KeyError" in message
        writer.write(_request(3, "", payload=b"\xff\xff\xff"))  # not a PredictRequest
        call_id, code, message, _, _ = await _answer(reader)
        assert (call_id, code) == (3, "INVALID_ARGUMENT")
        assert message.startswith("the Predict request is not a valid protobuf message")
        assert [s[0] for s in servicer.seen] == ["abort", "bug"]
        writer.write(_request(4, "dpsr"))  # still serving
        assert (await _answer(reader))[:2] == (4, "OK")
    _run(tmp_path, scenario)


def test_a_cancel_frame_cancels_the_call_and_it_still_gets_its_one_answer(tmp_path):
    async def scenario(servicer, server, reader, writer):
        writer.write(_request(1, "wait"))
        await servicer.started.wait()
        writer.write(protocol.HEAD.pack(12, protocol.CANCEL, 1))
        assert await _answer(reader) == (1, "CANCELLED", "cancelled by the client", [], b"")
        assert servicer.cancelled == 1 and servicer.done_callbacks == 1
        # Cancelled in the same read as its request, before its task ever ran a step.
        writer.write(_request(2, "dpsr") + protocol.HEAD.pack(12, protocol.CANCEL, 2))
        assert (await _answer(reader))[:3] == (2, "CANCELLED", "cancelled by the client")
        assert len(servicer.seen) == 1  # its Predict never started
        # A cancel for a call already answered, or never sent, changes nothing.
        writer.write(protocol.HEAD.pack(12, protocol.CANCEL, 2) +
                     protocol.HEAD.pack(12, protocol.CANCEL, 99) + _request(3, "dpsr"))
        assert (await _answer(reader))[:2] == (3, "OK")
    _run(tmp_path, scenario)


def test_frames_split_anywhere_are_read_whole(tmp_path):
    async def scenario(servicer, server, reader, writer):
        stream = b"".join(_request(i, "dpsr") for i in range(1, 6))
        for i in range(0, len(stream), 7):  # 7-byte pieces: heads and bodies cut everywhere
            writer.write(stream[i:i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        got = sorted([(await _answer(reader))[:2] for _ in range(5)])
        assert got == [(i, "OK") for i in range(1, 6)]
    _run(tmp_path, scenario)


@pytest.mark.parametrize("bad", [
    protocol.HEAD.pack(12, protocol.ANSWER, 1),                       # not the front end's kind
    protocol.HEAD.pack(12 + (2 << 20), protocol.REQUEST, 1),          # over the largest frame
    protocol.HEAD.pack(12 + 4, protocol.REQUEST, 1) + b"\x00" * 4,    # shorter than its fields
], ids=["answer kind", "over the largest", "short fields"])
def test_a_frame_that_breaks_the_protocol_ends_the_connection(tmp_path, bad):
    async def scenario(servicer, server, reader, writer):
        writer.write(_request(1, "wait"))
        await servicer.started.wait()
        writer.write(bad)
        assert await reader.read() == b""  # closed, with no answer for the call it held
        for _ in range(100):
            if servicer.cancelled:
                break
            await asyncio.sleep(0.01)
        assert servicer.cancelled == 1  # nobody waits for its answer: its work is stopped
        # The front end connects again and is served.
        reader2, writer2 = await asyncio.open_unix_connection(str(tmp_path / "p.sock"))
        writer2.write(_request(2, "dpsr"))
        assert (await _answer(reader2))[:2] == (2, "OK")
        writer2.close()
    _run(tmp_path, scenario)


def test_the_deadline_the_servicer_sees_counts_down(tmp_path):
    async def scenario(servicer, server, reader, writer):
        writer.write(_request(1, "wait", deadline_us=1_000_000))
        await servicer.started.wait()
        await asyncio.sleep(0.2)
        assert 0 <= servicer.contexts[0].time_remaining() <= 0.8
        servicer.release.set()
        assert (await _answer(reader))[:2] == (1, "OK")
    _run(tmp_path, scenario)
