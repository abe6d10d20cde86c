"""bench/loadgen_cc (bench/serving_bench.py's default client) against a fake gRPC server that
answers every other request OK and refuses the rest with RESOURCE_EXHAUSTED: what it sent
equals what the server saw, byte for byte, and its counts add up. No assertion on time: the
Poisson schedule's length is checked against its expected count, the latencies only for order.
"""
import collections
import json
import os
import socket
import subprocess
import threading
from concurrent import futures

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOADGEN = os.path.join(ROOT, "bench", "dpsr_loadgen")
METHOD = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def loadgen():
    if not os.access(LOADGEN, os.X_OK):
        subprocess.run(["make", "-s", "-C", ROOT, "bench/dpsr_loadgen"], check=True)
    return LOADGEN


class _Fake:
    """Answers requests that start with b"ok" with their own bytes reversed; refuses others."""

    def __init__(self):
        self.seen = collections.Counter()
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.unary_unary_rpc_method_handler(self._answer)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService", {"Predict": handler})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _answer(self, request: bytes, context):
        with self.lock:
            self.seen[request] += 1
        if not request.startswith(b"ok"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused")
        return request[::-1]


def _requests_file(tmp_path, messages):
    path = tmp_path / "requests.bin"
    with open(path, "wb") as f:
        for m in messages:
            f.write(len(m).to_bytes(4, "little") + m)
    return str(path)


def _run(loadgen, *flags):
    done = subprocess.run([loadgen, *flags], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return lines, json.loads(lines[-1])


def test_counts_add_up_and_every_byte_arrives(loadgen, tmp_path):
    # Requests of several sizes (one over 64 KiB), alternately answered and refused.
    messages = [(b"ok" if i % 2 == 0 else b"no") + bytes([i]) * (10 + 9000 * i)
                for i in range(8)]
    fake = _Fake()
    try:
        rate, duration, warmup, channels = 400.0, 1.0, 0.25, 3
        lines, r = _run(loadgen, f"--address=127.0.0.1:{fake.port}",
                        f"--requests={_requests_file(tmp_path, messages)}", f"--rate={rate}",
                        f"--duration={duration}", f"--warmup={warmup}",
                        f"--channels={channels}", "--seed=3", "--timeout=30")
    finally:
        fake.server.stop(None)
    assert lines[:2] == ["LOAD_START", "LOAD_END"]
    total = sum(fake.seen.values())
    warm = 20  # max(20, 2 * channels) calls one at a time before the load
    load_calls = total - warm
    # A Poisson count over warmup + duration seconds at `rate`: within 5 standard deviations.
    expected = rate * (duration + warmup)
    assert abs(load_calls - expected) < 5 * expected ** 0.5
    # Call i sends message i % len(messages), warm-up and load alike, each one whole.
    want = collections.Counter(messages[i % len(messages)] for i in range(warm))
    want.update(messages[i % len(messages)] for i in range(load_calls))
    assert fake.seen == want
    # Every call of the measured seconds ended OK or refused, and nothing else.
    assert r["unfinished"] == 0
    assert set(r["errors"]) <= {"RESOURCE_EXHAUSTED"}
    assert r["ok"] + r["errors"].get("RESOURCE_EXHAUSTED", 0) == r["sent"]
    assert r["sent"] <= load_calls
    # Answered from LOAD_START on, warm-up seconds included: the even calls of the load.
    assert r["answered_all"] == (load_calls + 1) // 2
    assert abs(r["ok"] - r["errors"]["RESOURCE_EXHAUSTED"]) <= 1
    assert r["achieved_qps"] == pytest.approx(r["ok"] / duration)
    assert 0 <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert 0 <= r["refused_p50_ms"] <= r["refused_p99_ms"]


def test_an_unreachable_server_gives_errors_not_a_hang(loadgen, tmp_path):
    with socket_port() as port:  # bound, never listening: connections are refused
        lines, r = _run(loadgen, f"--address=127.0.0.1:{port}",
                        f"--requests={_requests_file(tmp_path, [b'ok'])}", "--rate=50",
                        "--duration=0.2", "--warmup=0", "--timeout=0.5")
    assert r["ok"] == 0 and r["answered_all"] == 0
    assert sum(r["errors"].values()) == r["sent"] > 0
    assert set(r["errors"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@pytest.mark.parametrize("flags, message", [
    (["--rate=10"], "--address is required"),
    (["--address=x", "--rate=10"], "--requests is required"),
    (["--address=x", "--requests=/nonexistent", "--rate=10"], "cannot open --requests"),
    (["--address=x", "--requests=R", "--rate=fast"], "--rate=fast must be a number"),
    (["--address=x", "--requests=R", "--rate=0"], "--rate must be > 0"),
    (["--address=x", "--requests=R", "--rate=1", "--k=5"], "unknown flag --k"),
])
def test_bad_flags_are_named(loadgen, tmp_path, flags, message):
    path = _requests_file(tmp_path, [b"ok"])
    done = subprocess.run([loadgen, *[f.replace("=R", "=" + path) for f in flags]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_cut_short_request_file_is_named(loadgen, tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes((100).to_bytes(4, "little") + b"only ten b")
    done = subprocess.run([loadgen, "--address=x", f"--requests={path}", "--rate=1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{path}: request 0 is cut short" in done.stderr


class socket_port:
    """A loopback port bound and not listening, for as long as the block runs."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()
