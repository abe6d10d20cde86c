"""Fault suite: ops mistakes and failures against real `dpsr serve` / `dpsr proxy`
processes. Each must leave the service answering:

  * a replica that is up but has no servable version (missing base path): the proxy fails
    over to the replica that has one (finding 2; before: about half the requests NOT_FOUND);
  * odd version directories (beyond int64, non-ASCII digits, a symlink outside
    --model_base_path_root), present at start and created while serving: one log line each,
    the healthy version keeps serving (findings 3, 4);
  * SIGTERM of a shard server under load: zero CANCELLED calls, exit 0 (finding 5), the proxy
    answers with the partial flag meanwhile, and complete answers once the shard is restarted.
"""
import collections
import os
import signal
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.proxy import config as proxy_config
from tests.support import toy_servable as ts
from tests.support import waiting
from tests.support.load import PredictLoad
from tests.support.serving_testing import outputs, predict_request

ODD_AT_START = ("99999999999999999999", "²")
ODD_LATER = ("18446744073709551616", "３", "٤")
ODD_MARKER = "٥"  # made once ODD_LATER's warnings are logged: proves a later scan


@pytest.fixture(scope="module")
def faults(tmp_path_factory, toy_model_dir, shard_dirs, catalog, spec):
    """good: the toy model under a root, started with odd version dirs and a symlink outside
    the root; empty: a server whose base path does not exist; s0, s1: two shards on fixed
    ports; the proxy routes "dpsr" -> (good, empty) and "sharded" -> (s0), (s1)."""
    work = tmp_path_factory.mktemp("faults")
    root = work / "root"
    base = root / "dpsr"
    ids, emb = catalog
    ts.write_toy_servable(str(base / "1"), ids, emb, spec)
    for name in ODD_AT_START:
        (base / name).mkdir()
    (work / "outside" / "7").mkdir(parents=True)
    os.symlink(work / "outside" / "7", base / "7")
    logs = str(work)
    poll = ["--file_system_poll_wait_seconds=0.2"]
    good = process.model_server_process(str(base), "dpsr", name="good", log_dir=logs,
                                        flags=poll + [f"--model_base_path_root={root}"])
    empty = process.model_server_process(str(work / "missing"), "dpsr", name="empty",
                                         log_dir=logs, flags=poll)
    shards = [process.model_server_process(shard_dirs[s], "dpsr", name=f"s{s}", log_dir=logs,
                                           port=process.free_port(),
                                           flags=["--enable_batching"]) for s in range(2)]
    # good and empty bind port 0: the proxy config is written once their ports are known.
    process.start_all([good, empty] + shards)
    text = proxy_config.proxy_config_text({"dpsr": ((good.address, empty.address),)},
                                          deadline_ms=5000)
    text += proxy_config.proxy_config_text(
        {"sharded": ((shards[0].address,), (shards[1].address,))}, backend_model_name="dpsr",
        deadline_ms=3000, shard_deadline_ms=1000)
    config_file = work / "proxy.config"
    config_file.write_text(text)
    proxy = process.start_proxy(config_file=str(config_file), log_dir=logs)
    yield dict(good=good, empty=empty, s0=shards[0], s1=shards[1], proxy=proxy, base=base,
               stub=process.prediction_stub(proxy.address))
    for p in (good, empty, *shards, proxy):
        p.stop()


def test_proxy_fails_over_from_a_replica_without_a_version(faults, catalog, spec):
    stub = faults["stub"]
    ids, emb = catalog
    want, _, _ = ts.reference_search(["cordless drill"], ids, emb, spec, 5)
    codes = collections.Counter()
    for _ in range(30):
        try:
            got = outputs(stub.Predict(predict_request("dpsr", ["cordless drill"], k=5),
                                       timeout=10))
            np.testing.assert_array_equal(got["item_ids"], want)
            codes["OK"] += 1
        except grpc.RpcError as e:
            codes[e.code().name] += 1
    assert codes == {"OK": 30}  # before: about half NOT_FOUND
    # The replica without a version is really up and answers NOT_FOUND itself.
    direct = process.prediction_stub(faults["empty"].address)
    with pytest.raises(grpc.RpcError) as info:
        direct.Predict(predict_request("dpsr", ["drill"]), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # A version nobody has is still NOT_FOUND through the proxy (after asking both).
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request("dpsr", ["drill"], version=42), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _status(address):
    channel = grpc.insecure_channel(address)
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "dpsr"
        return {s.version: s.state for s in stub.GetModelStatus(request, timeout=10)
                .model_version_status}
    finally:
        channel.close()


def test_odd_version_directories_never_replace_the_healthy_version(faults):
    good, base = faults["good"], faults["base"]
    direct = process.prediction_stub(good.address)
    for name in ODD_LATER:
        (base / name).mkdir()
    # Polls happened, not a time passed: once the later names are logged, one more odd
    # directory is made and awaited, so at least one whole scan ran after the first warnings
    # (a warning repeated on every scan would show as a second line).
    waiting.wait_until(lambda: all(f"ignoring {n!r}" in good.log_tail(400) for n in ODD_LATER),
                       "the warnings for the later odd directories", poll_s=0.05)
    (base / ODD_MARKER).mkdir()
    waiting.wait_until(lambda: f"ignoring {ODD_MARKER!r}" in good.log_tail(400),
                       "a scan after those warnings", poll_s=0.05)
    for _ in range(5):
        response = direct.Predict(predict_request("dpsr", ["apple"], k=3), timeout=10)
        assert response.model_spec.version.value == 1
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert _status(good.address) == {1: available}
    log = good.log_tail(400)
    for name in ODD_AT_START + ODD_LATER + (ODD_MARKER, "7"):
        assert log.count(f"ignoring {name!r}") == 1, (name, log)
    assert "outside --model_base_path_root" in log
    assert "Traceback" not in log


def _partial(response) -> bool:
    return "partial" in response.outputs and response.outputs["partial"].bool_val[0]


def _wait(condition, what="condition"):
    waiting.wait_until(condition, what, poll_s=0.02)


def test_sigterm_under_load_drains_then_restart_recovers(faults):
    s1, stub = faults["s1"], faults["stub"]
    direct = process.prediction_stub(s1.address)
    heavy = predict_request("dpsr", ["apple iphone", "drill", "苹果手机"] * 4, k=300)
    with PredictLoad(direct, heavy, threads=6) as load, PredictLoad(
            stub, predict_request("sharded", ["drill"], k=20), threads=2,
            summary=_partial) as via_proxy:
        _wait(lambda: load.count("OK") >= 60)
        sigterm_at = time.monotonic()
        s1.proc.send_signal(signal.SIGTERM)
        assert s1.proc.wait(timeout=waiting.STALL_S) == 0, s1.log_tail()
        at_exit = via_proxy.count("OK")
        _wait(lambda: sum(via_proxy.summaries()) >= 10 and via_proxy.count("OK") > at_exit + 10)
    # Calls in flight at SIGTERM were answered or, if still queued in gRPC, refused (before:
    # 1-2 CANCELLED in most runs, and in a loaded CI run 2 of 72 even after the handler-level
    # count: gRPC cancels queued calls when its shutdown starts, so the server now refuses
    # them itself first). A call that reaches the server in the instant its listener closes,
    # a second or more after SIGTERM, may still be torn down by gRPC (CANCELLED).
    in_flight = collections.Counter(c.code for c in load.calls() if c.start < sigterm_at)
    later = collections.Counter(c.code for c in load.calls() if c.start >= sigterm_at)
    # (A call sent just before SIGTERM may still reach the server after it: refused, not lost.)
    assert set(in_flight) <= {"OK", "UNAVAILABLE"} and in_flight["OK"] >= 60, (in_flight, later)
    assert set(later) <= {"OK", "UNAVAILABLE", "CANCELLED"}, later
    assert later["CANCELLED"] <= max(3, later["UNAVAILABLE"] // 100), later
    assert load.count("OK") >= 60
    assert set(via_proxy.codes()) == {"OK"}, via_proxy.codes()
    # Restarted on the same port: complete answers again.
    s1.launch().wait_ready(waiting.STALL_S)

    def complete():
        response = stub.Predict(predict_request("sharded", ["drill"], k=20), timeout=10)
        return not response.outputs["partial"].bool_val[0]
    _wait(complete, "complete answers after the restart")
