"""The server as a process under hostile conditions: its file-descriptor limit exhausted,
compressed requests that inflate far past the message limit, its native front end killed.
Real `dpsr serve` processes and real clients (grpcio, or h2 for what grpcio never sends); every
assertion is on statuses, counts and bytes, none on time (retries are bounded by count)."""
import collections
import os
import re
import resource
import shutil
import signal
import socket
import tempfile
import threading

import grpc
import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import client_retry, front_end
from tests.support import serving_testing as st
from tests.support import waiting
from tests.support.raw_http2 import RawHttp2, gzip_zeros
from tests.support.server_metrics import METRICS_PATH, runs

native_only = pytest.mark.skipif(not os.access(front_end.BINARY, os.X_OK),
                                 reason="the native front end is not built (make build)")
FRONT_ENDS = [pytest.param("native", marks=native_only), "python"]


def _start(model_dir, tmp_path, front, *flags):
    return process.start_model_server(model_dir, model_name="dpsr", log_dir=str(tmp_path),
                                      flags=[f"--front_end={front}", *flags])


def _front_end_pid(server) -> int:
    """The pid of the server's dpsr_front_end child (its newest, after a restart)."""
    pid = st.front_end_pid(server.proc.pid)
    assert pid is not None, "no dpsr_front_end child of the server:\n" + server.log_tail()
    return pid


def _predict_ok(address: str, attempts: int) -> int:
    """Sends a normal Predict on a fresh connection up to `attempts` times; returns the
    1-based attempt that was answered OK (0: none was)."""
    request = st.predict_request("dpsr", ["cordless drill"], k=5)
    for attempt in range(1, attempts + 1):
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            channel.unary_unary(st.PREDICT_METHOD,
                                request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=None)(request, timeout=2,
                                                            wait_for_ready=True)
            return attempt
        except grpc.RpcError:
            continue
        finally:
            channel.close()
    return 0


def _soft_and_hard(pid: int) -> tuple:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)


def test_the_server_and_its_front_end_raise_the_soft_fd_limit_to_the_hard_one(
        toy_model_dir, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    if low == hard:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) leaves no room to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # what the children inherit
    try:
        server = process.model_server_process(toy_model_dir, model_name="dpsr",
                                              log_dir=str(tmp_path),
                                              flags=["--front_end=native"]).launch()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server.wait_ready()
    try:
        assert _soft_and_hard(server.proc.pid) == (hard, hard)
        if os.access(front_end.BINARY, os.X_OK):
            assert _soft_and_hard(_front_end_pid(server)) == (hard, hard)
    finally:
        server.stop()


def _accepted_or_shed(connection: socket.socket) -> str:
    """"accepted" once the server's HTTP/2 preface (its SETTINGS) arrives on a connection that
    sent nothing, "shed" when it is closed first, "hung" when neither comes within 60 s."""
    connection.settimeout(60)
    try:
        return "accepted" if connection.recv(1) else "shed"
    except ConnectionResetError:
        return "shed"
    except socket.timeout:
        return "hung"


def _front_end_log(pid: int) -> str:
    with open(os.readlink(f"/proc/{pid}/fd/2"), encoding="utf-8", errors="replace") as f:
        return f.read()


@native_only
def test_the_native_front_end_sheds_connections_while_its_fds_are_out_and_keeps_serving(
        toy_model_dir, tmp_path):
    # Before: once accept() failed with EMFILE, gRPC's listener stopped for good (its accept
    # loop gives up on any error but EAGAIN/ECONNABORTED): connections over the limit hung,
    # and the front end had to exit for a fresh process, dropping every established
    # connection. Now those connections are closed at accept, the listener keeps going, and
    # the process and its established connections carry on.
    server = _start(toy_model_dir, tmp_path, "native")
    channel = grpc.insecure_channel(server.address)
    predict = channel.unary_unary(st.PREDICT_METHOD,
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=None)
    request = st.predict_request("dpsr", ["cordless drill"], k=5)
    idle = []
    try:
        predict(request, timeout=30, wait_for_ready=True)  # connected before the fds run out
        pid = _front_end_pid(server)
        # 16 descriptors free under the limit. The limit bounds descriptor numbers, not their
        # count, and the listening socket keeps the number it has in the server (often high).
        in_use = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")]
        limit = 16
        while limit - sum(fd < limit for fd in in_use) < 16:
            limit += 1
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))  # it cannot raise it back
        idle = [socket.create_connection(("127.0.0.1", server.grpc_port)) for _ in range(64)]
        outcomes = collections.Counter(_accepted_or_shed(s) for s in idle)
        assert outcomes["hung"] == 0, outcomes
        assert 1 <= outcomes["accepted"] <= 16, outcomes
        assert outcomes["shed"] >= 64 - 16, outcomes
        predict(request, timeout=30)  # the established connection, with the fds still out
        for s in idle:
            s.close()
        idle = []
        # The front end frees its descriptors as it reads the closes; a connection made
        # before then could be shed too, and the count compared below would not be the idle
        # connections' alone. Wait (bounded by polls, not by a clock) until they are freed.
        for _ in range(1200):
            if len(os.listdir(f"/proc/{pid}/fd")) <= len(in_use) + 1:
                break
            threading.Event().wait(0.05)
        assert _predict_ok(server.address, attempts=30) > 0, server.log_tail()
        assert _front_end_pid(server) == pid  # the same process: nothing restarted
        log = _front_end_log(pid)
        assert "descriptors ran out (EMFILE); closing new connections at accept" in log, log
        assert "accepting connections again" in log, log
    finally:
        for s in idle:
            s.close()
        channel.close()
        assert server.stop() == 0, server.log_tail()
    log = server.log_tail(200)
    assert "restarted" not in log and "stopped accepting" not in log, log
    shed = re.findall(r"connections shed \(descriptors out\) (\d+)", log)
    assert shed and int(shed[-1]) == outcomes["shed"], log


@native_only
def test_a_killed_front_end_is_restarted_on_the_same_port(toy_model_dir, tmp_path):
    # Before: the server shut itself down with exit status 0, so a supervisor that restarts
    # on failure left it down.
    server = _start(toy_model_dir, tmp_path, "native")
    try:
        first = _front_end_pid(server)
        os.kill(first, signal.SIGKILL)
        assert _predict_ok(server.address, attempts=30) > 0, server.log_tail()
        assert server.alive()
        assert _front_end_pid(server) != first
        log = server.log_tail(200)
        assert "the native front end exited (code -9) while serving" in log
        assert "restarted" in log
    finally:
        assert server.stop() == 0, server.log_tail()


@native_only
def test_calls_held_by_a_killed_front_end_are_answered_through_a_retry_policy(toy_model_dir,
                                                                              tmp_path):
    # The calls a killed front end held fail UNAVAILABLE: their connection ended with it. A
    # client with the documented retry policy (client_retry) has them answered by the fresh
    # front end; a client without one gets the UNAVAILABLE. One call at the Python server
    # (stopped, so every call stays where it is), one queued per connection: the call refused
    # RESOURCE_EXHAUSTED (never retried) proves the others were admitted.
    server = _start(toy_model_dir, tmp_path, "native", "--front_end_max_running=1",
                    "--front_end_max_queued_per_client=1", "--front_end_queue_target_ms=0")
    request = st.predict_request("dpsr", ["cordless drill"], k=5).SerializeToString()
    retrying, retry_call = st.raw_predict_call(server.address,
                                               *client_retry.retry_channel_options())
    plain, plain_call = st.raw_predict_call(server.address)
    try:
        expected = retry_call(request, timeout=60)  # both connected and warm
        assert plain_call(request, timeout=60) == expected
        first = _front_end_pid(server)
        with st.python_server_stopped(server):
            held = st.admitted_all_but_one(retry_call, request, 3, "the retrying client's")
            lost = st.admitted_all_but_one(plain_call, request, 2, "the plain client's")
            assert not any(f.done() for f in held + lost)
            os.kill(first, signal.SIGKILL)
            # Their connection died with the process; no policy sends them again.
            assert [st.future_code(f) for f in lost] == ["UNAVAILABLE"]
        assert [st.future_code(f) for f in held] == ["OK", "OK"]
        assert [f.result() for f in held] == [expected, expected]
        assert _front_end_pid(server) != first
        assert "the native front end exited (code -9) while serving" in server.log_tail(200)
    finally:
        retrying.close()
        plain.close()
        assert server.stop() == 0, server.log_tail()


def _front_end_dir(parent: str, name: str, listening: bool = False, socket_file: bool = True):
    """A front end directory under `parent` whose backend socket has a listener or not; returns
    (its path, the listening socket or None)."""
    path = os.path.join(parent, name)
    os.mkdir(path, 0o700)
    if not socket_file:
        return path, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(path, front_end.BACKEND_SOCKET))
    if listening:
        sock.listen(1)
        return path, sock
    sock.close()  # the file stays, nothing listens: what a killed server leaves
    return path, None


def test_only_directories_whose_server_is_gone_are_swept():
    parent = tempfile.mkdtemp(prefix="fe")  # short: a UNIX socket path has 107 bytes at most
    live = None
    try:
        dead, _ = _front_end_dir(parent, front_end.DIRECTORY_PREFIX + "dead")
        live_dir, live = _front_end_dir(parent, front_end.DIRECTORY_PREFIX + "live",
                                        listening=True)
        binding, _ = _front_end_dir(parent, front_end.DIRECTORY_PREFIX + "binding",
                                    socket_file=False)
        other, _ = _front_end_dir(parent, "another-program-dead")
        assert front_end.remove_stale_directories(parent) == 1
        assert not os.path.exists(dead)
        assert all(os.path.isdir(p) for p in (live_dir, binding, other))
        assert front_end.remove_stale_directories(parent) == 0
    finally:
        if live is not None:
            live.close()
        shutil.rmtree(parent, ignore_errors=True)


@native_only
def test_a_server_killed_without_stopping_leaves_a_directory_the_next_front_end_removes(
        toy_model_dir, tmp_path, monkeypatch):
    # Before: every SIGKILLed server left its front end's directory (two sockets and a log) in
    # the temporary directory for good.
    parent = tempfile.mkdtemp(prefix="fe")
    try:
        monkeypatch.setenv("TMPDIR", parent)  # the server's temporary directory
        server = _start(toy_model_dir, tmp_path, "native")
        try:
            assert _predict_ok(server.address, attempts=30) == 1, server.log_tail()
            server.kill()
            left = [n for n in os.listdir(parent) if n.startswith(front_end.DIRECTORY_PREFIX)]
            assert len(left) == 1, left
        finally:
            server.stop()
        monkeypatch.setattr(tempfile, "tempdir", parent)  # this process's gettempdir()
        fresh = front_end.NativeFrontEnd("127.0.0.1:0", front_end.FrontEndOptions(), 0, 1 << 20)
        try:
            assert os.listdir(parent) == [  # the dead one's removed, its own made
                os.path.basename(os.path.dirname(fresh.backend_socket))]
        finally:
            fresh.stop()
        assert os.listdir(parent) == []
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@native_only
def test_a_connection_made_while_the_front_end_is_down_waits_for_the_fresh_one(
        toy_model_dir, tmp_path):
    # Before: the port closed with the process, so a client that connected before the restart
    # (0.1 s backoff, then the process's start) was refused, and gRPC clients then waited out
    # their reconnect backoff (1 s, growing) before trying again. Now the server holds the
    # listening socket: the connection waits in its backlog and the fresh process takes it.
    server = _start(toy_model_dir, tmp_path, "native")
    raw = None
    try:
        first = _front_end_pid(server)
        os.kill(first, signal.SIGKILL)
        waiting.wait_until(lambda: first not in dict(st.children(server.proc.pid)),
                           "the killed front end to exit")
        raw = socket.create_connection(("127.0.0.1", server.grpc_port))  # not refused
        channel = grpc.insecure_channel(server.address,
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            channel.unary_unary(st.PREDICT_METHOD,
                                request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=None)(
                st.predict_request("dpsr", ["cordless drill"], k=5), timeout=60)
        finally:
            channel.close()
        assert _accepted_or_shed(raw) == "accepted"  # the fresh process's HTTP/2 preface
        assert _front_end_pid(server) != first
        log = server.log_tail(200)
        assert "the native front end exited (code -9) while serving" in log, log
        assert "its port stays open for the fresh one" in log, log
    finally:
        if raw is not None:
            raw.close()
        assert server.stop() == 0, server.log_tail()


@native_only
def test_a_front_end_that_keeps_dying_stops_the_server_with_a_failure_status(
        toy_model_dir, tmp_path):
    server = _start(toy_model_dir, tmp_path, "native")
    try:
        for _ in range(front_end.MAX_RESTARTS):
            os.kill(_front_end_pid(server), signal.SIGKILL)
            assert _predict_ok(server.address, attempts=30) > 0, server.log_tail()
        os.kill(_front_end_pid(server), signal.SIGKILL)  # one more than it restarts
        assert server.proc.wait(timeout=120) != 0
        assert "restarting it gave up" in server.log_tail(200)
    finally:
        server.stop()


INFLATED_BYTES = 256 << 20
LIMIT_BYTES = 4 << 20


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_a_compressed_request_that_inflates_past_the_limit_is_refused_unread(
        toy_model_dir, tmp_path, front):
    # Before: gRPC inflated the whole message (here 256 MiB) before it compared its size
    # with the limit (4 MiB), in whichever process held the port.
    server = _start(toy_model_dir, tmp_path, front,
                    f"--grpc_channel_arguments=grpc.max_receive_message_length={LIMIT_BYTES}")
    try:
        body = gzip_zeros(INFLATED_BYTES)
        holder = _front_end_pid(server) if front == "native" else server.proc.pid
        client = RawHttp2(server.grpc_port, window=1 << 20)
        try:
            grown, headers = st.peak_rss_growth(holder, lambda: client.compressed_predict(body))
        finally:
            client.close()
        # UNIMPLEMENTED "Compression algorithm 'gzip' is disabled", before the message is read
        assert headers.get("grpc-status") == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), headers
        assert "gzip" in headers.get("grpc-message", ""), headers
        assert grown < 64 << 20, f"{front} front end grew by {grown >> 20} MiB"
        assert _predict_ok(server.address, attempts=3) == 1  # and it keeps serving
    finally:
        assert server.stop() == 0, server.log_tail()


@native_only
def test_connections_that_never_read_hold_a_bounded_total_in_the_native_front_end(
        toy_model_dir, tmp_path):
    # Before: slow start computes one call per new connection, and a connection holding
    # nothing always had its answer held: every such connection added one answer (300
    # connections of a 290 KB answer: +117 MiB in the front end). Now, once the first answers
    # of connections that never read pass the total (8 MiB), each further one is refused.
    (tmp_path / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}')
    server = process.start_model_server(
        toy_model_dir, model_name="dpsr", rest=True, log_dir=str(tmp_path), flags=[
            "--front_end=native", "--max_k=300",
            f"--monitoring_config_file={tmp_path / 'monitoring.config'}"])
    readers = []
    try:
        request = st.predict_request("dpsr", [f"phone {i}" for i in range(64)], k=300)
        stub = process.prediction_stub(server.address)
        size = stub.Predict(request, timeout=60).ByteSize()  # this connection has read
        held = (8 << 20) // size + 1  # the first answer past 8 MiB is the last one held
        connections = held + 20
        before = runs(server, "dpsr")
        message = request.SerializeToString()
        for _ in range(connections):
            readers.append(RawHttp2(server.grpc_port))
            readers[-1].open_predict(message)

        def all_answered():
            handled = runs(server, "dpsr")["handled"] - before["handled"]
            return handled if handled >= connections else None
        waiting.wait_until(all_answered, f"{connections} calls answered by the server",
                           progress=lambda: runs(server, "dpsr")["handled"], poll_s=0.3)
        assert stub.Predict(request, timeout=60).ByteSize() == size  # a reader: served
        assert _predict_ok(server.address, attempts=1) == 1  # a new client, a small answer
    finally:
        for reader in readers:
            reader.close()
        assert server.stop() == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        refused = re.findall(r"answers refused \(unread budget\) (\d+)", f.read())
    assert refused and int(refused[-1]) == connections - held, (refused, held, size)
