"""`dpsr serve --front_end=native`: the C++ front end (front_end_cc/) on the gRPC port, the
Python server behind it on a private UNIX socket. Real server processes and real gRPC clients;
every assertion is on answers, statuses, orders and counts (the front end's summary line), none
on time. To hold calls in the front end's queue deterministically, the Python server is stopped
with SIGSTOP (the front end, its child, keeps running) and continued afterwards."""
import os
import random
import re
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import front_end
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api import predict as server_predict
from tests.support import serving_testing as st
from tests.support import waiting
from tests.support.raw_http2 import RawHttp2

pytestmark = pytest.mark.skipif(not os.access(front_end.BINARY, os.X_OK),
                                reason="the native front end is not built (make build)")

_SUMMARY = re.compile(
    r"calls accepted (\d+), forwarded (\d+), queued (\d+), dropped before their turn (\d+), "
    r"refused \(queue full\) (\d+), answers refused \(unread budget\) (\d+), clients held back "
    r"(\d+), passed without a turn (\d+)")


def _start(model_dir, tmp_path, *flags):
    return process.start_model_server(model_dir, model_name="dpsr", log_dir=str(tmp_path),
                                      flags=["--front_end=native", "--max_k=300", *flags])


def _summary(server) -> dict:
    """The front end's counts, from the line the server logs when it stops."""
    assert server.stop() == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        found = _SUMMARY.findall(f.read())
    assert found, server.log_tail()
    keys = ("accepted", "forwarded", "queued", "dropped", "refused", "unread_refused", "held_back",
            "unmetered")
    return dict(zip(keys, map(int, found[-1])))


def _predict_answers(address, requests) -> list:
    """(status name, serialized answer or error message) of each Predict request."""
    stub = process.prediction_stub(address)
    got = []
    for request in requests:
        try:
            got.append(("OK", stub.Predict(request, timeout=30).SerializeToString()))
        except grpc.RpcError as e:
            got.append((e.code().name, e.details()))
    return got


def test_answers_errors_and_services_equal_the_python_servers(toy_model_dir, tmp_path, queries):
    socket_path = str(tmp_path / "direct.sock")
    # The queue delay control off: on a loaded host it may refuse a call, which is its job
    # (tested below), not what this test compares.
    server = _start(toy_model_dir, tmp_path, f"--grpc_socket_path={socket_path}",
                    "--front_end_queue_target_ms=0")
    try:
        through, direct = server.address, f"unix:{socket_path}"
        requests = [st.predict_request("dpsr", queries, k=7),
                    st.predict_request("dpsr", queries[:1]),
                    st.predict_request("no_such_model", queries[:1]),
                    st.predict_request("dpsr", queries[:1], k=-3),
                    st.predict_request("dpsr", queries[:1], version=42)]
        answers = {}
        for name, address in (("front end", through), ("direct", direct)):
            got = _predict_answers(address, requests)
            status = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(address))
            spec = get_model_status_pb2.GetModelStatusRequest()
            spec.model_spec.name = "dpsr"
            got.append(("OK", status.GetModelStatus(spec, timeout=30).SerializeToString()))
            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
            got.append(("OK", health.Check(health_pb2.HealthCheckRequest(), timeout=30).status))
            answers[name] = got
        assert answers["front end"] == answers["direct"]
        codes = [code for code, _ in answers["front end"]]
        assert codes == ["OK", "OK", "NOT_FOUND", "INVALID_ARGUMENT", "NOT_FOUND", "OK", "OK"]
    finally:
        counts = _summary(server)
    # (Counts include the launcher's readiness checks.)
    assert counts["accepted"] == counts["forwarded"] >= len(requests) + 2
    assert counts["dropped"] == counts["refused"] == 0


def test_a_flood_of_one_client_waits_its_turns_behind_another_clients_call(
        toy_model_dir, tmp_path):
    # One call at the server at a time: the gate's order is the only order. The flood's 400
    # calls all wait in the front end (the queue delay control off, so none is refused); the
    # other client's one call, sent once the flood has started, is next but one (the flood's
    # running call ends first), not 400th.
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    "--front_end_queue_target_ms=0")
    flood_channel, flood_call = st.raw_predict_call(server.address)
    order, lock, flood_started = [], threading.Lock(), threading.Event()

    def note(who):
        def done(_future):
            with lock:
                order.append(who)
            flood_started.set()
        return done

    try:
        big = st.predict_request("dpsr", [f"phone {i}" for i in range(64)],
                                 k=240).SerializeToString()
        futures = [flood_call.future(big, timeout=300) for _ in range(400)]
        for f in futures:
            f.add_done_callback(note("flood"))
        other_channel = grpc.insecure_channel(server.address,
                                              options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(other_channel).result(timeout=60)  # connected, no call yet
        other = prediction_service_pb2_grpc.PredictionServiceStub(other_channel)
        assert flood_started.wait(120)
        with lock:
            sent_after = len(order)
        other.Predict(st.predict_request("dpsr", ["cordless drill"]), timeout=120)
        with lock:
            order.append("other")
        assert [st.future_code(f) for f in futures] == ["OK"] * 400
    finally:
        flood_channel.close()
        counts = _summary(server)
    at = order.index("other")
    assert order.count("flood") == 400
    assert 400 - at > 100, "the flood ended before the other call was sent: nothing tested"
    # Flood calls that ended between the other call's sending and its answer: the one running,
    # and those that ended while the call was on its way to the front end (a FIFO queue would
    # put ~390 here).
    assert at - sent_after <= 4, (sent_after, at)
    assert counts["forwarded"] == counts["accepted"] >= 401
    assert counts["queued"] >= 300


def test_calls_given_up_while_waiting_never_reach_the_python_server(toy_model_dir, tmp_path):
    # The queue delay control off: its refusals are tested below. With it on, on a loaded host
    # the expired calls' cancellations may not all have reached the front end when the last
    # call comes, and the queue they stood in for 0.5 s then refuses it, rightly, as standing.
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    "--front_end_queue_target_ms=0")
    request = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    channel, call = st.raw_predict_call(server.address)
    try:
        call(request, timeout=60)  # connected and warm
        with st.python_server_stopped(server):
            holder = call.future(request, timeout=120)  # admitted: the one slot, at the server
            expiring = [call.future(request, timeout=0.5) for _ in range(50)]
            cancelled = [call.future(request, timeout=120) for _ in range(50)]
            for f in cancelled:
                f.cancel()
            # Every one of them ends in the front end while the Python server is stopped.
            assert [st.future_code(f) for f in expiring] == ["DEADLINE_EXCEEDED"] * 50
            assert [st.future_code(f) for f in cancelled] == ["CANCELLED"] * 50
        assert st.future_code(holder) == "OK"
        assert st.future_code(call.future(request, timeout=60)) == "OK"  # still serving
    finally:
        channel.close()
        counts = _summary(server)
    # Only the warm-up, the holder and the last call reached the server (as Predict calls: the
    # launcher's readiness checks are other methods): every expiring or cancelled call the
    # front end got was dropped where it waited. A call cancelled at once may never have left
    # the client (on a loaded host 40 of 50 did not), so the front end got 50 to 100 of them.
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        framed = re.findall(r"framed Predict calls read: (\d+)", f.read())
    assert framed and int(framed[-1]) == 3, server.log_tail()
    assert counts["accepted"] - counts["forwarded"] == counts["dropped"]
    assert 50 <= counts["dropped"] <= 100, counts


def test_sigterm_refuses_later_calls_and_finishes_the_admitted_ones(toy_model_dir, tmp_path):
    # Before: SIGTERM started gRPC's Shutdown at once, which cancels (CANCELLED, not retriable)
    # every call its core has received but not yet handed to the service: a call in flight at
    # SIGTERM was lost now and then (a CI run of test_faults: 3 of 75). Now calls reaching the
    # service after SIGTERM are refused UNAVAILABLE, and Shutdown waits for the admitted ones.
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    "--front_end_max_queued=1", "--front_end_queue_target_ms=0")
    request = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    channel, call = st.raw_predict_call(server.address)
    try:
        call(request, timeout=60)  # connected and warm
        first = st.front_end_pid(server.proc.pid)
        with st.python_server_stopped(server):
            # One runs (at the stopped server), one waits, the third is refused: the queue
            # holds one. That refusal proves the other two were admitted.
            admitted = st.admitted_all_but_one(call, request, 3, "the client's")
            os.kill(first, signal.SIGTERM)
            # Until the drain begins a new call finds the queue full; from then on it is refused
            # UNAVAILABLE, at once, though the Python server is stopped.
            waiting.wait_until(
                lambda: st.future_code(call.future(request, timeout=60)) == "UNAVAILABLE",
                "a call refused by the draining front end")
            assert [st.future_code(call.future(request, timeout=60)) for _ in range(2)] == [
                "UNAVAILABLE"] * 2
        assert [st.future_code(f) for f in admitted] == ["OK", "OK"]
        waiting.wait_until(lambda: st.front_end_pid(server.proc.pid) not in (None, first),
                           "the front end to be restarted")
        fresh_channel, fresh = st.raw_predict_call(server.address)
        try:
            assert st.future_code(fresh.future(request, timeout=60)) == "OK"
        finally:
            fresh_channel.close()
    finally:
        channel.close()
        assert server.stop() == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    # The first process's exit line: its counts, the three refusals while it stopped among them.
    exit_line = re.search(r"the native front end exited \(code 0\) while serving: (.*)", log)
    assert exit_line, log[-3000:]
    assert re.search(r"refused \(stopping\) 3\b", exit_line.group(1)), exit_line.group(1)


@pytest.mark.parametrize("lifo_after_ms", [100, 0])
def test_past_lifo_after_a_connections_newest_waiting_call_goes_next(toy_model_dir, tmp_path,
                                                                      lifo_after_ms):
    # One call at the server (stopped), 30 waiting behind it, then one more. Once they have
    # waited past --front_end_lifo_after_ms, the server runs again: with adaptive LIFO the last
    # one runs right after the one at the server; in arrival order (0) it runs last. The queue
    # delay control is off: its queue stands past the target for more than an interval, so
    # with it on the last call would be refused, or not, by how fast the 30 calls arrived (the
    # control is tested on its own below).
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    f"--front_end_lifo_after_ms={lifo_after_ms}",
                    "--front_end_queue_target_ms=0", "--front_end_max_queued_per_client=31")
    request = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    channel, call = st.raw_predict_call(server.address)
    order, lock = [], threading.Lock()

    def note(who):
        def done(_future):
            with lock:
                order.append(who)
        return done

    try:
        call(request, timeout=60)  # connected and warm
        with st.python_server_stopped(server):
            holder = call.future(request, timeout=120)
            old = [call.future(request, timeout=120) for _ in range(30)]
            # Before: the last call was sent and the server continued at once, so on a loaded
            # host the front end could take it after the holder's turn had passed to an old
            # call (order 'old', 'old', 'new', ...). Now two more are sent: the queue holds 31,
            # so one waits and the other is refused, which proves the waiting one is in.
            time.sleep(0.3)  # the old calls' streams taken in before the last ones are sent
            last = [call.future(request, timeout=120) for _ in range(2)]
            waiting.wait_until(lambda: any(f.done() for f in [holder] + old + last),
                               "a call refused by the full queue")
            refused = [f for f in [holder] + old + last if f.done()]
            assert refused in ([last[0]], [last[1]]), [st.future_code(f) for f in refused]
            assert st.future_code(refused[0]) == "RESOURCE_EXHAUSTED"
            new = last[1] if refused[0] is last[0] else last[0]
            time.sleep(0.3)  # every waiting call past --front_end_lifo_after_ms (100)
            for f in [holder] + old:
                f.add_done_callback(note("old"))
            new.add_done_callback(note("new"))
        assert [st.future_code(f) for f in [holder] + old + [new]] == ["OK"] * 32
    finally:
        channel.close()
        with open(server.log_path, encoding="utf-8", errors="replace") as f:
            before = f.read()
        counts = _summary(server)
        with open(server.log_path, encoding="utf-8", errors="replace") as f:
            newest_first = re.findall(r"run newest first \(overload\) (\d+)",
                                      f.read()[len(before):])
    assert len(order) == 32
    if lifo_after_ms:
        assert order.index("new") <= 1, order        # after the holder (or with it)
        assert int(newest_first[-1]) >= 1
    else:
        assert order.index("new") == 31, order
        assert int(newest_first[-1]) == 0
    assert (counts["dropped"], counts["refused"]) == (0, 1)  # one of the last two, refused


def _overload_counts(server_log_tail: str) -> tuple:
    """(refused as overloaded, refused as unable to finish) from the front end's summary."""
    found = re.findall(r"refused \(overloaded\) (\d+), refused \(deadline before its turn\) "
                       r"(\d+)", server_log_tail)
    assert found, server_log_tail
    return tuple(map(int, found[-1]))


def test_a_connection_whose_queue_stands_past_the_target_is_refused_at_once(toy_model_dir,
                                                                             tmp_path):
    # One call at the (stopped) server, 5 of the flood's calls waiting. Once the oldest has
    # waited past the target (100 ms) for a whole interval (100 ms), each proven by a call on
    # a third connection that expired in its own queue (0.3 s), the flood's next 10 calls are
    # refused at once with RESOURCE_EXHAUSTED: they come back while the server is still
    # stopped. Another client's call is not refused for the flood's queue, and every call
    # admitted is answered once the server runs again.
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    "--front_end_queue_target_ms=100", "--front_end_queue_interval_ms=100")
    request = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    flood_channel, flood = st.raw_predict_call(server.address)
    clock_channel, clock = st.raw_predict_call(server.address)
    other_channel, other = st.raw_predict_call(server.address)
    try:
        for call in (flood, clock, other):
            call(request, timeout=60)  # connected and warm
        with st.python_server_stopped(server):
            holder = flood.future(request, timeout=120)
            waiting_calls = [flood.future(request, timeout=120) for _ in range(5)]
            assert st.future_code(clock.future(request, timeout=0.3)) == "DEADLINE_EXCEEDED"
            waiting_calls.append(flood.future(request, timeout=120))  # the interval starts
            assert st.future_code(clock.future(request, timeout=0.3)) == "DEADLINE_EXCEEDED"
            refused = [flood.future(request, timeout=120) for _ in range(10)]
            errors = [st.rpc_error(f.result) for f in refused]  # answered while stopped
            served_other = other.future(request, timeout=120)
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "overloaded" in errors[0].details()
        assert [st.future_code(f) for f in [holder] + waiting_calls + [served_other]] == ["OK"] * 8
    finally:
        for channel in (flood_channel, clock_channel, other_channel):
            channel.close()
        counts = _summary(server)
        with open(server.log_path, encoding="utf-8", errors="replace") as f:
            overloaded, cannot_finish = _overload_counts(f.read())
    assert (overloaded, cannot_finish) == (10, 0)
    assert counts["dropped"] == 2  # the two clock calls, expired in their queue


def test_a_connection_over_its_queue_limit_is_refused_at_once(toy_model_dir, tmp_path):
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    "--front_end_max_queued_per_client=5")
    request = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    channel, call = st.raw_predict_call(server.address)
    try:
        call(request, timeout=60)
        with st.python_server_stopped(server):
            calls = [call.future(request, timeout=120) for _ in range(13)]
            # One runs (the slot is free), 5 wait, 7 are refused; which ones is the order the
            # front end's threads take the streams in, not always the order sent (on a loaded
            # host the first sent may be refused). The refusals come back while the server is
            # stopped: nothing waits for it.
            waiting.wait_until(lambda: sum(f.done() for f in calls) >= 7, "7 refusals")
            refused = [f for f in calls if f.done()]
            errors = [st.rpc_error(f.result) for f in refused]
        assert len(refused) == 7
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "already has 5 calls waiting" in errors[0].details()
        assert [st.future_code(f) for f in calls if f not in refused] == ["OK"] * 6
    finally:
        channel.close()
        counts = _summary(server)
    assert counts["accepted"] - counts["forwarded"] == counts["refused"] == 7


_REQUEST_BYTES_REFUSED = re.compile(r"refused \(request bytes\) (\d+)")


def test_calls_past_the_request_byte_budgets_are_refused_at_once(toy_model_dir, tmp_path):
    # Requests of about 300 KB, a connection's budget of exactly three of them and a total of
    # three and a half: while the server is stopped the first runs and two wait, holding the
    # budget; the connection's later calls are refused at once (once its budget is held, before
    # they are read), and so is another connection's large call (the total), while its small
    # call still passes. Answered, the bytes are free again.
    big = st.predict_request("dpsr", [f"phone {i} " + "x" * 2990 for i in range(100)])
    big, small = big.SerializeToString(), st.predict_request(
        "dpsr", ["cordless drill"]).SerializeToString()
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=1",
                    f"--front_end_max_request_bytes_per_client={3 * len(big)}",
                    f"--front_end_max_request_bytes={3 * len(big) + len(big) // 2}")
    channel, call = st.raw_predict_call(server.address)
    other_channel, other = st.raw_predict_call(server.address)
    try:
        call(small, timeout=60)
        with st.python_server_stopped(server):
            first = [call.future(big, timeout=120) for _ in range(5)]
            waiting.wait_until(lambda: sum(f.done() for f in first) >= 2, "2 refusals")
            refused = [f for f in first if f.done()]
            unread = st.rpc_error(call, big, timeout=60)  # the budget is held: not read
            total = st.rpc_error(other, big, timeout=60)
            passing = other.future(small, timeout=120)
            assert not passing.done()
        assert len(refused) == 2
        for error in [st.rpc_error(f.result) for f in refused] + [unread, total]:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert (f"this connection's calls waiting or running already hold {3 * len(big)} "
                "request bytes (refused before its message was read)") in unread.details()
        for error in [st.rpc_error(f.result) for f in refused]:  # read or not: a race
            assert f"hold {3 * len(big)} request bytes" in error.details() or (
                f"hold more than {3 * len(big)} request bytes with this one" in error.details())
        assert (f"the calls waiting or running would hold more than "
                f"{3 * len(big) + len(big) // 2} request bytes with this one") in total.details()
        assert [st.future_code(f) for f in first if f not in refused] == ["OK"] * 3
        assert st.future_code(passing) == "OK"
        assert len(call(big, timeout=60)) > 0  # answered: the budget is free
        assert len(other(big, timeout=60)) > 0
    finally:
        channel.close()
        other_channel.close()
        counts = _summary(server)
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        assert _REQUEST_BYTES_REFUSED.findall(f.read())[-1] == "4"
    assert counts["accepted"] - counts["forwarded"] == 4


def test_large_predict_requests_go_over_grpc_not_the_framed_hop(toy_model_dir, tmp_path):
    # Requests of about 30 KB against --front_end_framed_max_request_bytes=20000: they reach
    # the server over gRPC, the small ones as frames; the answers are the same either way.
    # Without the limit (0) every request is framed, one of 4 MB too: gRPC holds it in dozens
    # of read buffers, written to the hop from where they lie (front_end_cc/write_parts.h).
    big = st.predict_request("dpsr", [f"phone {i} " + "x" * 2990 for i in range(10)])
    small = st.predict_request("dpsr", ["cordless drill"])
    huge = st.predict_request("dpsr", [f"drill {i} " + "y" * 3900 for i in range(1000)], k=1)
    assert len(big.SerializeToString()) > 20000 > len(small.SerializeToString())
    assert len(huge.SerializeToString()) > 3 << 20
    requests = [small, big, small, big, big, huge]
    answers = {}
    for framed_max in (20000, 0):
        server = _start(toy_model_dir, tmp_path,
                        f"--front_end_framed_max_request_bytes={framed_max}")
        try:
            answers[framed_max] = _predict_answers(server.address, requests)
        finally:
            server.stop()
        with open(server.log_path, encoding="utf-8", errors="replace") as f:
            framed = re.findall(r"framed Predict calls read: (\d+)", f.read())
        assert framed and int(framed[-1]) == (2 if framed_max else 6), server.log_tail()
    assert [code for code, _ in answers[20000]] == ["OK"] * 6
    assert answers[20000] == answers[0]


def test_a_string_over_the_limit_is_refused_by_the_front_end_as_the_server_words_it(
        toy_model_dir, tmp_path):
    # The front end refuses it (front_end_cc/string_limit.h) before the server reads it: a
    # 5,000-byte query (framed size) and a 2 MiB one (over gRPC's size), with the message the
    # server's own check gives (model_server/api/predict.py), while calls beside them run.
    expected = {}
    for n in (5000, 2 << 20):
        with pytest.raises(ServingError) as e:
            server_predict._check_strings("query", np.array([b"y" * n], dtype=object),
                                          server_predict.RequestLimits())
        expected[n] = e.value.message
    server = _start(toy_model_dir, tmp_path)
    channel, call = st.raw_predict_call(server.address)
    ok = st.predict_request("dpsr", ["cordless drill"]).SerializeToString()
    try:
        assert st.future_code(call.future(ok, timeout=60)) == "OK"
        for n in (5000, 2 << 20):
            request = st.predict_request("dpsr", [b"y" * n]).SerializeToString()
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=60)
            assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                           expected[n])
        assert st.future_code(call.future(ok, timeout=60)) == "OK"
    finally:
        channel.close()
        assert server.stop() == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert re.findall(r"refused \(string over the limit\) (\d+)", log)[-1:] == ["2"], \
        server.log_tail()
    framed = re.findall(r"framed Predict calls read: (\d+)", log)
    assert framed and int(framed[-1]) == 2, server.log_tail()  # the two that were OK


def test_a_client_that_never_reads_gets_no_more_answers_computed(toy_model_dir, tmp_path):
    # Answers of ~290 KB against a hold-back of 64 KiB, slow start off (the reader may have 2
    # calls at the server at once): once the first answer waits for the zero-window reader, its
    # other calls stay in the front end's queue, never computed, while another client is served.
    server = _start(toy_model_dir, tmp_path, "--front_end_max_running=2",
                    "--front_end_initial_running_per_client=0",
                    "--max_unsent_response_bytes_per_client=65536")
    reader = RawHttp2(server.grpc_port)
    try:
        slow = st.predict_request("dpsr", [f"phone {i}" for i in range(64)],
                                  k=240).SerializeToString()
        for _ in range(20):
            reader.open_predict(slow)
        other = process.prediction_stub(server.address)
        for _ in range(5):
            other.Predict(st.predict_request("dpsr", ["cordless drill"]), timeout=60)
    finally:
        reader.close()
        counts = _summary(server)
    assert counts["held_back"] >= 1
    # The reader's calls that reached the server: the two running when the first answer was
    # counted, and at most one the gate started in between; the others ended in the queue when
    # it closed.
    assert counts["accepted"] - counts["forwarded"] == counts["dropped"] >= 17, counts


def test_a_missing_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(front_end, "BINARY", "/nonexistent/dpsr_front_end")
    with pytest.raises(OSError, match="make build"):
        front_end.NativeFrontEnd("127.0.0.1:0", front_end.FrontEndOptions(), 128, 1 << 20)


def _predict_with_trailers(address, request):
    """(status name, serialized answer or error message, the dpsr-* trailing metadata)."""
    stub = process.prediction_stub(address)
    try:
        response, call = stub.Predict.with_call(request, timeout=30)
        return "OK", response.SerializeToString(), _dpsr_trailers(call.trailing_metadata())
    except grpc.RpcError as e:
        return e.code().name, e.details(), _dpsr_trailers(e.trailing_metadata())


def _dpsr_trailers(metadata):
    return sorted((k, v) for k, v in metadata or () if k.startswith("dpsr-"))


@pytest.mark.parametrize("hop", ["framed", "grpc"])
def test_the_proxy_behind_its_front_end_answers_as_without_it(toy_model_dir, tmp_path, queries,
                                                               hop):
    # Behind its native front end the proxy takes Predict as frames (the default) or over
    # gRPC (--nofront_end_framed_predict); either way every answer, error and trailer is the
    # one its own gRPC server gives. The partial model's second shard is a port nobody serves.
    server = _start(toy_model_dir, tmp_path)
    proxies = []
    try:
        dead = f"127.0.0.1:{process.free_port()}"
        routes = {"dpsr": ((server.address,),), "halves": ((server.address,), (dead,))}
        native = ["--front_end=native"] + (["--nofront_end_framed_predict"] if hop == "grpc"
                                           else [])
        proxies = process.start_all([
            process.proxy_process(routes, log_dir=str(tmp_path), name=name, flags=flags,
                                  backend_model_name="dpsr")
            for name, flags in (("proxy_native", native),
                                ("proxy_python", ["--front_end=python"]))])
        requests = [st.predict_request("dpsr", queries, k=5),
                    st.predict_request("no_such_model", queries[:1]),
                    st.predict_request("dpsr", queries[:1], k=-1),
                    st.predict_request("halves", queries[:2], k=5)]
        answers = [[_predict_with_trailers(proxy.address, r) for r in requests]
                   for proxy in proxies]
        assert answers[0] == answers[1]
        assert [code for code, _, _ in answers[0]] == ["OK", "NOT_FOUND", "INVALID_ARGUMENT",
                                                        "OK"]
        assert answers[0][0][2] == []  # one shard: forwarded as it is, nothing merged
        assert answers[0][3][2] == [("dpsr-missing-shards", "1"), ("dpsr-partial", "true")]
    finally:
        for proxy in proxies:
            assert proxy.stop() == 0, proxy.log_tail()
        server.stop()
    with open(proxies[0].log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    found = _SUMMARY.findall(log)
    assert found and int(found[-1][0]) == int(found[-1][1]) >= len(requests)
    framed = re.findall(r"; framed (\d+);", log)
    assert framed and int(framed[-1]) == (len(requests) if hop == "framed" else 0)


def test_a_new_client_gets_one_call_computed_until_its_answers_are_read(toy_model_dir, tmp_path):
    # Slow start at the defaults (32 calls at the server, 4 per client, starting at 1): a
    # connection that opens 20 zero-window streams has 1 of them computed; the hold-back budget
    # (4 MiB) is far from reached by one ~290 KB answer, so the window alone holds the rest.
    server = _start(toy_model_dir, tmp_path)
    reader = RawHttp2(server.grpc_port)
    try:
        slow = st.predict_request("dpsr", [f"phone {i}" for i in range(64)],
                                  k=240).SerializeToString()
        for _ in range(20):
            reader.open_predict(slow)
        stub = process.prediction_stub(server.address)
        # A client that reads: 40 calls at once, all answered (its window opens as it reads).
        futures = [stub.Predict.future(st.predict_request("dpsr", [f"drill {i}"]), timeout=120)
                   for i in range(40)]
        assert [st.future_code(f) for f in futures] == ["OK"] * 40
    finally:
        reader.close()
        counts = _summary(server)
    assert counts["held_back"] == 0
    # 1 of 20 computed on a quiet machine (19 dropped in every quiet run). gRPC may report a
    # buffered answer's call as ended before the reader has the bytes, which opens the window
    # by one: seen once (18 dropped) with two CPU-bound processes beside the test.
    assert counts["accepted"] - counts["forwarded"] == counts["dropped"] >= 17, counts


def test_a_health_watch_does_not_hold_its_connections_turns(toy_model_dir, tmp_path):
    # A Watch answers until the client leaves. Taking a turn, it held its connection's one
    # slow-start call for good and the same connection's Predict calls waited behind it (the
    # same for a long Profile and the Terminate meant to end it: test_profiler_service.py).
    server = _start(toy_model_dir, tmp_path)
    channel = grpc.insecure_channel(server.address,
                                    options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=120)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        codes = []
        for i in range(3):
            try:
                stub.Predict(st.predict_request("dpsr", [f"drill {i}"]), timeout=20)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
        watch.cancel()
    finally:
        channel.close()
    counts = _summary(server)
    assert codes == ["OK"] * 3
    # The Watch passed without a turn; every other call (the launcher's readiness checks too)
    # took one.
    assert counts["unmetered"] == 1, counts
    assert counts["forwarded"] == counts["accepted"] - 1, counts


def _front_end_flags():
    """cli.front_end_flags with the flags marked parsed (each test sets those it reads)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    from dpsr_tf.cli import front_end_flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return front_end_flags


def test_tls_with_the_native_front_end_is_refused_with_the_way_out():
    front_end_flags = _front_end_flags()
    with flagsaver.flagsaver(front_end="native", front_end_max_running=5):
        with pytest.raises(ValueError, match="terminate TLS in front"):
            front_end_flags.front_end_options(ssl=object())
        options = front_end_flags.front_end_options(ssl=None, hold_back_unread_bytes=7)
    assert (options.max_running, options.hold_back_unread_bytes) == (5, 7)
    with flagsaver.flagsaver(front_end="python"):
        assert front_end_flags.front_end_options(ssl=object()) is None


def test_auto_is_native_unless_the_port_serves_tls_or_the_front_end_is_not_built(monkeypatch):
    front_end_flags = _front_end_flags()
    assert flags.FLAGS["front_end"].default == "auto"
    with flagsaver.flagsaver(front_end="auto", front_end_max_running=6):
        assert front_end_flags.front_end_options(ssl=None).max_running == 6
        assert front_end_flags.front_end_options(ssl=object()) is None
        monkeypatch.setattr(front_end, "BINARY", "/nonexistent/dpsr_front_end")
        assert front_end_flags.front_end_options(ssl=None) is None
    with flagsaver.flagsaver(front_end="native"):  # asked for by name: the start says why not
        assert front_end_flags.front_end_options(ssl=None) is not None


def test_channel_arguments_apply_to_the_front_ends_port(toy_model_dir, tmp_path):
    # The user's --grpc_channel_arguments reach the port clients use, replacing the front end's
    # own value (128 streams per connection): the client sees it in the server's SETTINGS.
    server = _start(toy_model_dir, tmp_path,
                    "--grpc_channel_arguments=grpc.max_concurrent_streams=3")
    reader = RawHttp2(server.grpc_port)
    try:
        while not any(type(e).__name__ == "RemoteSettingsChanged" for e in reader.events):
            reader.pump()
        assert reader.conn.remote_settings.max_concurrent_streams == 3
    finally:
        reader.close()
        server.stop()


def test_calls_ending_at_every_point_of_their_life_leave_the_front_end_serving(toy_model_dir,
                                                                               tmp_path):
    # A call is started, answered and freed on different threads (gRPC's, the framed hop's
    # reader, the end of another call that hands it its turn). Calls that expire within
    # milliseconds, are cancelled at random instants or die with their connection end at every
    # point of that life; a call read after it was freed crashed the front end here (the
    # server restarted it and the calls it held failed UNAVAILABLE), and answers handed to the
    # wrong call would differ from their query's. 8 clients, seeded, 40 rounds of 1-30 calls.
    # The queue delay control off, so that a loaded host refuses few calls (any refusal is
    # RESOURCE_EXHAUSTED, never UNAVAILABLE).
    server = _start(toy_model_dir, tmp_path, "--front_end_queue_target_ms=0")
    texts = ["cordless drill", "garden hose", "led bulb", "paint roller"]
    requests = [st.predict_request("dpsr", [t]).SerializeToString() for t in texts]
    channel, call = st.raw_predict_call(server.address)
    try:
        expected = [call(r, timeout=60) for r in requests]
    finally:
        channel.close()
    assert len(set(expected)) == len(texts)  # each query's answer tells it apart
    first = st.front_end_pid(server.proc.pid)
    codes, wrong, lock = {}, [], threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        for _ in range(40):
            channel, call = st.raw_predict_call(server.address)
            sent = []
            for _ in range(rng.randint(1, 30)):
                which, fate = rng.randrange(len(texts)), rng.random()
                timeout = rng.uniform(0.0005, 0.005) if fate < 0.3 else 60
                future = call.future(requests[which], timeout=timeout)
                if 0.3 <= fate < 0.6:  # cancelled within 2 ms
                    time.sleep(rng.uniform(0, 0.002))
                    future.cancel()
                sent.append((which, future))
            if rng.random() < 0.3:
                channel.close()  # its calls in flight end with their connection
            for which, future in sent:
                code = st.future_code(future)
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == "OK" and future.result() != expected[which]:
                        wrong.append(which)
            channel.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel, call = st.raw_predict_call(server.address)
    try:
        assert call(requests[0], timeout=60) == expected[0]  # still serving
    finally:
        channel.close()
    assert set(codes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}, codes
    assert codes.get("OK", 0) > 0 and not wrong
    assert st.front_end_pid(server.proc.pid) == first
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        assert "native front end exited" not in f.read()
    assert server.stop() == 0
