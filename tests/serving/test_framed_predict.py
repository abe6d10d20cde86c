"""`dpsr serve --front_end_framed_predict` (the default): Predict calls from the native front end
reach the server as frames on a private UNIX socket (front_end_cc/framed_backend.h) instead of as gRPC
calls. Three levels: a real server, whose answers and errors must equal those of its own gRPC
server; the front end binary against a frame server played by the test (what it sends, how it
relays answers, errors, a lost connection and a cancellation); and the Python frame server
against a fake core (the protocol's edges). Assertions are on bytes, statuses and counts."""
import concurrent.futures
import contextlib
import os
import re
import socket
import struct
import stat
import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import frames as protocol
from dpsr_tf.serving import front_end
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api import framed_predict as fp
from tests.support import serving_testing as st

pytestmark = pytest.mark.skipif(not os.access(front_end.BINARY, os.X_OK),
                                reason="the native front end is not built (make build)")
_FRAMED = re.compile(r"dpsr_front_end: calls accepted (\d+), forwarded (\d+).*; framed (\d+)")


def _raw_predict(address):
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                                        response_deserializer=None)


def _outcome(call, payload, timeout=30):
    try:
        return "OK", call(payload, timeout=timeout)
    except grpc.RpcError as e:
        return e.code().name, e.details()


# --- a real server -------------------------------------------------------------------------

@pytest.mark.parametrize("hop", ["framed", "grpc"])
def test_answers_and_errors_equal_the_servers_own_grpc(toy_model_dir, tmp_path, queries, hop):
    """Framed (the default) or over gRPC (--nofront_end_framed_predict), the front end's
    answers are the server's own, byte for byte."""
    socket_path = str(tmp_path / "direct.sock")
    server = process.start_model_server(
        toy_model_dir, model_name="dpsr", log_dir=str(tmp_path),
        flags=["--front_end=native", "--max_k=300", f"--grpc_socket_path={socket_path}",
               "--front_end_queue_target_ms=0"]  # no refusal on a loaded host
        + (["--nofront_end_framed_predict"] if hop == "grpc" else []))
    requests = [st.predict_request("dpsr", queries, k=7).SerializeToString(),
                st.predict_request("dpsr", queries[:1]).SerializeToString(),
                st.predict_request("no_such_model", queries[:1]).SerializeToString(),
                st.predict_request("dpsr", queries[:1], k=-3).SerializeToString(),
                st.predict_request("dpsr", queries[:1], version=42).SerializeToString(),
                b"\xff\xff\xff not a protobuf"]
    try:
        answers = {}
        for name, address in (("framed", server.address), ("direct", f"unix:{socket_path}")):
            channel, call = _raw_predict(address)
            answers[name] = [_outcome(call, r) for r in requests]
            # Other methods still come over gRPC, through the front end too.
            metadata = get_model_metadata_pb2.GetModelMetadataRequest()
            metadata.model_spec.name = "dpsr"
            metadata.metadata_field.append("signature_def")
            answers[name].append(("OK", process.prediction_stub(address).GetModelMetadata(
                metadata, timeout=30).SerializeToString()))
            channel.close()
        assert answers["framed"] == answers["direct"]
        assert [code for code, _ in answers["framed"]] == [
            "OK", "OK", "NOT_FOUND", "INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT", "OK"]
    finally:
        assert server.stop() == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    accepted, forwarded, framed = map(int, _FRAMED.findall(log)[-1])
    assert accepted == forwarded >= len(requests) + 1
    if hop == "framed":  # every Predict went framed, the metadata call did not
        assert framed == len(requests)
        assert f"framed Predict calls read: {len(requests)}" in log
    else:
        assert framed == 0 and "framed Predict calls read" not in log


def test_without_the_native_front_end_the_flag_is_refused(toy_model_dir, tmp_path):
    with pytest.raises(RuntimeError, match="--front_end_framed_predict needs the native"):
        process.start_model_server(toy_model_dir, model_name="dpsr", log_dir=str(tmp_path),
                                   flags=["--front_end=python", "--front_end_framed_predict"])


# --- the front end binary against a frame server played here ---------------------------------

class _FrameServer:
    """Accepts the front end's framed connection; the test reads its frames and answers."""

    def __init__(self, path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(60)
        self.conn = None

    def accept(self):
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(60)

    def read_frame(self):
        head = fp._read_exactly(self.conn, protocol.HEAD.size)  # pylint: disable=protected-access
        length, kind, call_id = protocol.HEAD.unpack(head)
        body = fp._read_exactly(self.conn, length - 12) if length > 12 else b""  # pylint: disable=protected-access
        return kind, call_id, body

    def answer(self, call_id, code, message="", payload=b"", trailers=None):
        self.conn.sendall(protocol.answer_frame(call_id, code, message, payload, trailers))


@pytest.fixture()
def front(tmp_path):
    """A dpsr_front_end with its framed hop on a _FrameServer and no gRPC backend at all; every
    Predict framed, however large (framed_max_request_bytes 0)."""
    fe = front_end.NativeFrontEnd("127.0.0.1:0", front_end.FrontEndOptions(
        framed_predict=True, queue_target_ms=0, framed_max_request_bytes=0), 0, 64 << 20)
    frames = _FrameServer(fe.framed_socket)
    fe.start()
    yield fe, frames
    fe.stop(grace_seconds=1)
    frames.listener.close()


def _call_async(call, payload, timeout=30, outcome=None):
    box = {}
    outcome = outcome or _outcome
    thread = threading.Thread(target=lambda: box.update(out=outcome(call, payload, timeout)))
    thread.start()
    return thread, box


def _a_new_connection_answers(call, frames, payload):
    """The next call connects to the frame server again, goes framed and gets its answer."""
    thread, box = _call_async(call, payload)
    frames.accept()
    _, call_id, body = frames.read_frame()
    assert body.endswith(payload)
    frames.answer(call_id, grpc.StatusCode.OK, payload=b"answer to " + payload)
    thread.join(30)
    assert box["out"] == ("OK", b"answer to " + payload)


def test_the_front_end_sends_frames_and_relays_answers(front):
    fe, frames = front
    channel, call = _raw_predict(f"127.0.0.1:{fe.port}")
    try:
        thread, box = _call_async(call, b"request one", timeout=20)
        frames.accept()
        kind, first_id, body = frames.read_frame()
        assert kind == protocol.REQUEST
        deadline_us, client_length = struct.unpack_from("<qI", body)
        # At most the client's 20 s, plus gRPC's rounding of the grpc-timeout header: it sends
        # the time left rounded up to a coarser unit (seen: 20.0997 s for a 20 s deadline).
        assert 0 < deadline_us <= 21_000_000
        client = body[12:12 + client_length].decode()
        assert client.startswith("ipv4:127.0.0.1:")  # the client's connection
        assert body[12 + client_length:] == b"request one"
        frames.answer(first_id, grpc.StatusCode.OK, payload=b"\x00answer\xff" * 5000)
        thread.join(30)
        assert box["out"] == ("OK", b"\x00answer\xff" * 5000)

        # An error answer is the call's status and message; ids differ per call.
        thread, box = _call_async(call, b"request two")
        kind, second_id, body = frames.read_frame()
        assert kind == protocol.REQUEST and second_id != first_id
        assert body.endswith(b"request two")
        frames.answer(second_id, grpc.StatusCode.NOT_FOUND, "no such model here")
        thread.join(30)
        assert box["out"] == ("NOT_FOUND", "no such model here")

        # The connection lost with a call waiting: UNAVAILABLE; the next call connects again.
        thread, box = _call_async(call, b"request three")
        frames.read_frame()
        frames.conn.close()
        thread.join(30)
        assert box["out"][0] == "UNAVAILABLE"
        _a_new_connection_answers(call, frames, b"request four")

        # A client that gives up (its deadline) gets its call cancelled on the server; the
        # answer that comes anyway is dropped and the front end goes on serving.
        thread, box = _call_async(call, b"request five", timeout=0.5)
        _, fifth_id, _ = frames.read_frame()
        thread.join(30)
        assert box["out"][0] == "DEADLINE_EXCEEDED"
        kind, cancelled_id, body = frames.read_frame()
        assert (kind, cancelled_id, body) == (protocol.CANCEL, fifth_id, b"")
        frames.answer(fifth_id, grpc.StatusCode.CANCELLED, "dropped")
        thread, box = _call_async(call, b"request six")
        _, sixth_id, _ = frames.read_frame()
        frames.answer(sixth_id, grpc.StatusCode.OK, payload=b"six")
        thread.join(30)
        assert box["out"] == ("OK", b"six")

        # A frame that breaks the protocol ends the connection: its calls fail UNAVAILABLE.
        thread, box = _call_async(call, b"request seven")
        frames.read_frame()
        frames.conn.sendall(protocol.HEAD.pack(12, 9, 1))  # kind 9 is no frame
        thread.join(30)
        assert box["out"][0] == "UNAVAILABLE"
    finally:
        channel.close()
    summary = fe.stop(grace_seconds=1)
    assert re.search(r"; framed 7;", summary), summary


def _trailed_outcome(call, payload, timeout):
    try:
        response, rpc = call.with_call(payload, timeout=timeout)
        return "OK", response, dict(rpc.trailing_metadata())
    except grpc.RpcError as e:
        return e.code().name, e.details(), dict(e.trailing_metadata() or ())


@pytest.mark.parametrize("code", [grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE],
                         ids=["answered", "failed"])
def test_an_answers_trailing_metadata_reaches_the_client(front, code):
    # The proxy answers a partial merge with dpsr-partial / dpsr-missing-shards trailers; the
    # front end passes them on, with the answer or the error.
    fe, frames = front
    channel, call = _raw_predict(f"127.0.0.1:{fe.port}")
    trailers = [("dpsr-partial", "true"), ("dpsr-missing-shards", "1,3")]
    try:
        thread, box = _call_async(call, b"q", outcome=_trailed_outcome)
        frames.accept()
        _, call_id, _ = frames.read_frame()
        frames.answer(call_id, code, "" if code == grpc.StatusCode.OK else "2 shards failed",
                      b"merged" if code == grpc.StatusCode.OK else b"", trailers)
        thread.join(30)
        got_code, got, metadata = box["out"]
        assert (got_code, got) == ((code.name, b"merged") if code == grpc.StatusCode.OK
                                   else (code.name, "2 shards failed"))
        assert metadata["dpsr-partial"] == "true" and metadata["dpsr-missing-shards"] == "1,3"
    finally:
        channel.close()


@pytest.mark.parametrize("trailers", [[("grpc-status", "0")], [("Upper", "v")],
                                      [("key-bin", "v")], [("k", "line\nbreak")], [("", "v")]],
                         ids=["grpc's own", "upper case", "binary", "control byte", "empty key"])
def test_an_answer_with_trailers_a_client_cannot_get_ends_the_connection(front, trailers):
    fe, frames = front
    channel, call = _raw_predict(f"127.0.0.1:{fe.port}")
    try:
        thread, box = _call_async(call, b"q")
        frames.accept()
        _, call_id, _ = frames.read_frame()
        frames.answer(call_id, grpc.StatusCode.OK, payload=b"a", trailers=trailers)
        thread.join(30)
        assert box["out"] == ("UNAVAILABLE", "dpsr front end: the server's framed socket sent "
                                             "a malformed answer")
        _a_new_connection_answers(call, frames, b"after")
    finally:
        channel.close()


def test_a_call_whose_frame_the_socket_broke_under_goes_over_grpc(front):
    # The server never runs a partial frame, so a call whose frame was cut is not lost: the
    # front end sends it over gRPC (before, it failed UNAVAILABLE). A gRPC backend here answers
    # with the length of what it got; the frame server accepts the connection and closes it
    # while the front end is still writing the 8 MB frame (far over the socket's buffer).
    fe, frames = front
    backend = grpc.server(concurrent.futures.ThreadPoolExecutor(2), options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    backend.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"over grpc: %d bytes" % len(request))}),))
    backend.add_insecure_port(f"unix:{fe.backend_socket}")
    backend.start()
    channel, call = _raw_predict(f"127.0.0.1:{fe.port}")
    try:
        thread, box = _call_async(call, b"x" * (8 << 20))
        frames.accept()
        frames.conn.close()
        thread.join(30)
        assert box["out"] == ("OK", b"over grpc: 8388608 bytes")
        _a_new_connection_answers(call, frames, b"small")  # framed again
    finally:
        channel.close()
        backend.stop(0)
    summary = fe.stop(grace_seconds=1)
    assert re.search(r"; framed 1;", summary), summary


# --- the Python frame server against a fake core --------------------------------------------

class _FakeServicer:
    """start_predict hands out run futures the test completes; with `decoding` set, behind a
    decoding future already done (as a large request's validation in the decode threads)."""

    def __init__(self):
        self.runs = []  # (request, timeout, client, future)
        self.draining = False
        self.decoding = False

    def start_predict(self, request, deadline, client, size=None):
        future = concurrent.futures.Future()
        timeout = None if deadline is None else deadline - time.monotonic()
        self.runs.append((request, timeout, client, future))
        if not self.decoding:
            return future, False
        decoding = concurrent.futures.Future()
        decoding.set_result(future)
        return decoding, True


def _request_frame(call_id, payload, client=b"peer-1", deadline_us=-1):
    body = struct.pack("<qI", deadline_us, len(client)) + client + payload
    return protocol.HEAD.pack(12 + len(body), protocol.REQUEST, call_id) + body


def _read_answer(conn):
    length, kind, call_id = protocol.HEAD.unpack(fp._read_exactly(conn, 16))  # pylint: disable=protected-access
    body = fp._read_exactly(conn, length - 12)  # pylint: disable=protected-access
    code, message, trailers, payload = protocol.parse_answer(body)
    assert trailers == []  # the model server sends none
    return kind, call_id, code, message, payload


@contextlib.contextmanager
def _serving_frames(path, max_request_bytes, shared=False):
    """(servicer, server, a connection to it) of a FramedPredictServer at `path`."""
    servicer = _FakeServicer()
    server = fp.FramedPredictServer(servicer, path, max_request_bytes, shared=shared)
    server.start()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    try:
        conn.connect(path)
        yield servicer, server, conn
    finally:
        conn.close()
        server.stop()


@pytest.fixture()
def frame_server(tmp_path):
    with _serving_frames(str(tmp_path / "f.sock"), 1 << 20) as served:
        yield served


@pytest.fixture()
def shared_frame_server(tmp_path):
    """A --framed_predict_socket of a server that takes requests of at most 1 KiB."""
    with _serving_frames(str(tmp_path / "shared.sock"), 1 << 10, shared=True) as served:
        yield served


@pytest.mark.parametrize("decoding", [False, True], ids=["validated at once", "decoded"])
def test_a_request_frame_runs_and_its_answer_comes_back(frame_server, queries, decoding):
    servicer, server, conn = frame_server
    servicer.decoding = decoding
    request = st.predict_request("dpsr", queries[:2], k=5)
    conn.sendall(_request_frame(7, request.SerializeToString(), deadline_us=2_500_000))
    _wait(lambda: servicer.runs)
    got, timeout, client, future = servicer.runs[0]
    assert got == request
    assert 0 < timeout <= 2.5
    assert client == ("framed", "peer-1")
    future.set_result(b"the answer's bytes")
    assert _read_answer(conn) == (protocol.ANSWER, 7, 0, "", b"the answer's bytes")
    # An error of the run: its code and message.
    conn.sendall(_request_frame(8, request.SerializeToString()))
    _wait(lambda: len(servicer.runs) == 2)
    assert servicer.runs[1][1] is None  # no deadline
    servicer.runs[1][3].set_exception(ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad k"))
    assert _read_answer(conn) == (protocol.ANSWER, 8, 3, "bad k", b"")
    # A cancel frame cancels a run that has not started; its answer says so.
    conn.sendall(_request_frame(9, request.SerializeToString()))
    _wait(lambda: len(servicer.runs) == 3)
    conn.sendall(protocol.HEAD.pack(12, protocol.CANCEL, 9))
    kind, call_id, code, message, payload = _read_answer(conn)
    assert (kind, call_id, code, payload) == (protocol.ANSWER, 9, 1, b"")
    assert servicer.runs[2][3].cancelled()
    # Bytes that are not a PredictRequest: INVALID_ARGUMENT, and no run.
    conn.sendall(_request_frame(10, b"\xff\xff\xff"))
    kind, call_id, code, message, _ = _read_answer(conn)
    assert (call_id, code) == (10, 3) and "not a valid protobuf message" in message
    assert len(servicer.runs) == 3
    # Draining: refused UNAVAILABLE without a run.
    servicer.draining = True
    conn.sendall(_request_frame(11, request.SerializeToString()))
    kind, call_id, code, message, _ = _read_answer(conn)
    assert (call_id, code) == (11, 14) and "shutting down" in message
    assert server.calls == 5


@pytest.mark.parametrize("bad", [
    protocol.HEAD.pack(12, 9, 1),                                        # no such kind
    protocol.HEAD.pack(12 + (2 << 20), protocol.REQUEST, 1),             # over the largest frame
    protocol.HEAD.pack(12 + 4, protocol.REQUEST, 1) + b"\x00" * 4,       # shorter than its fields
    protocol.HEAD.pack(24, protocol.REQUEST, 1) + struct.pack("<qI", -1, 99),  # name past the end
    protocol.HEAD.pack(8, protocol.REQUEST, 1),                          # shorter than its head
], ids=["unknown kind", "over the largest", "short fields", "name past the end", "short head"])
def test_a_frame_that_breaks_the_protocol_ends_the_connection(frame_server, queries, bad):
    servicer, _, conn = frame_server
    conn.sendall(_request_frame(1, st.predict_request("dpsr", queries[:1]).SerializeToString()))
    _wait(lambda: servicer.runs)
    conn.sendall(bad)
    assert conn.recv(1) == b""  # closed by the server
    assert servicer.runs[0][3].cancelled()  # and the run it had pending dropped


def _wait(condition, tries=3000):
    """Polls `condition` (bounded by count, not by time)."""
    for _ in range(tries):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition never held")


def test_a_shared_socket_is_private_to_its_user_and_replaces_only_a_dead_one(tmp_path):
    """--framed_predict_socket: mode 0600; a socket file nobody listens on is replaced, a live
    one or a file that is not a socket is refused; drain() waits for calls in flight."""
    path = str(tmp_path / "shared.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a server that died left its socket file
    dead.close()
    servicer = _FakeServicer()
    server = fp.FramedPredictServer(servicer, path, 1 << 20, shared=True)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(OSError, match="another server listens there"):
            fp.FramedPredictServer(_FakeServicer(), path, 1 << 20, shared=True)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(_request_frame(1, predict_pb2.PredictRequest().SerializeToString()))
        _wait(lambda: servicer.runs)
        assert server.drain(0.05) == 1  # its run has not ended
        servicer.runs[0][3].set_result(b"answer")
        assert _read_answer(conn)[2:] == (0, "", b"answer")
        assert server.drain(30) == 0
        conn.close()
    finally:
        server.stop()
    not_a_socket = tmp_path / "plain"
    not_a_socket.write_text("x")
    with pytest.raises(OSError, match="is not a socket"):
        fp.FramedPredictServer(_FakeServicer(), str(not_a_socket), 1 << 20, shared=True)
    assert not_a_socket.read_text() == "x"


def test_a_request_over_the_limit_on_a_shared_socket_is_refused_and_the_connection_serves_on(
        shared_frame_server):
    """A proxy may take larger requests than its local replica: the server answers such a
    request RESOURCE_EXHAUSTED (read and dropped unparsed) and keeps the connection, whose
    next call runs; on the front end's private socket the same frame ends the connection
    (test_a_frame_that_breaks_the_protocol_ends_the_connection)."""
    servicer, _, conn = shared_frame_server
    big = b"\x00" * (3 << 20)  # past the 1 KiB limit and its frame allowance, 3 chunks
    conn.sendall(_request_frame(1, big) + _request_frame(
        2, predict_pb2.PredictRequest().SerializeToString()))
    kind, call_id, code, message, payload = _read_answer(conn)
    assert (kind, call_id, code, payload) == (
        protocol.ANSWER, 1, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], b"")
    assert message == (f"Received message larger than max ({12 + 6 + len(big)} bytes in "
                       f"its frame vs. 1024)")
    _wait(lambda: servicer.runs)
    assert len(servicer.runs) == 1  # only the second call reached the servicer
    servicer.runs[0][3].set_result(b"second")
    assert _read_answer(conn)[1:] == (2, 0, "", b"second")


def test_a_request_within_the_frame_allowance_but_over_the_limit_is_refused_on_a_shared_socket(
        shared_frame_server):
    servicer, _, conn = shared_frame_server
    conn.sendall(_request_frame(1, b"\x00" * (50 << 10)))  # under 1 KiB + 64 KiB
    assert _read_answer(conn)[1:] == (
        1, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        f"Received message larger than max ({50 << 10} vs. 1024)", b"")
    assert servicer.runs == []
