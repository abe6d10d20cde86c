"""Helpers for tests and benchmarks of the serving stack: request builders with the real
tensorflow_serving protos, output decoding, error capture, and a process's memory."""
import contextlib
import os
import signal
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import grpc
import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import tensors
from tests.support import waiting


def fill_model_spec(spec, model: str, version=None, label=None, signature: str = "") -> None:
    """Names the model, and optionally its version or version label, and the signature."""
    spec.name = model
    spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label


def predict_request(model: str, queries, k=None, user_ids=None, version=None, label=None,
                    signature: str = "") -> "predict_pb2.PredictRequest":
    """A DPSR PredictRequest: query [B] string, optional k int32 scalar and user_id [B] int64."""
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, version, label, signature)
    tensors.from_ndarray(np.array([q.encode() if isinstance(q, str) else q for q in queries],
                                  dtype=object), request.inputs["query"])
    if k is not None:
        tensors.from_ndarray(np.array(k, dtype=np.int32), request.inputs["k"])
    if user_ids is not None:
        tensors.from_ndarray(np.array(user_ids, dtype=np.int64), request.inputs["user_id"])
    return request


def outputs(response) -> dict:
    """alias -> np.ndarray of a PredictResponse."""
    return {alias: tensors.to_ndarray(t) for alias, t in response.outputs.items()}


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """The grpc.RpcError that fn(*args, **kwargs) raises; AssertionError if it succeeds."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


# ----------------------------------------------------------------------------- hostile inputs
# The request classes of the adversarial probe, as data: the hostile-input suite
# (tests/serving/test_hostile_inputs.py) asserts each status while normal traffic runs, and
# bench/hostile_bench.py measures the normal traffic's latency per class for longer.

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def declared_tensor(dtype, shape, string_val=(), int_val=(), unknown_rank=False):
    """A TensorProto that declares `shape` whatever values it holds (a hostile request's)."""
    from tensorflow.core.framework import tensor_shape_pb2  # pylint: disable=g-import-not-at-top
    proto = tensors.TensorProto(dtype=dtype)
    if unknown_rank:
        proto.tensor_shape.unknown_rank = True
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape)
    proto.string_val.extend(string_val)
    proto.int_val.extend(int_val)
    return proto


def _with(request, **inputs):
    out = predict_pb2.PredictRequest()
    out.CopyFrom(request)
    for alias, proto in inputs.items():
        out.inputs[alias].CopyFrom(proto)
    return out


def hostile_grpc_cases(model: str = "dpsr", max_message_bytes: int = 64 << 20):
    """[(name, PredictRequest | raw bytes | a function making them, expected grpc.StatusCode)]
    of hostile Predict calls against a DPSR servable (query string [?], k int32 [] with a
    default)."""
    from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top
    string, int32 = types_pb2.DT_STRING, types_pb2.DT_INT32
    good = predict_request(model, ["drill"], k=5)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    huge = 100_000_000
    return [
        ("query declares [1e8] with one string",
         _with(good, query=declared_tensor(string, [huge], [b"x"])), invalid),
        ("query declares [3e7] with no string",
         _with(good, query=declared_tensor(string, [30_000_000])), invalid),
        ("k declares [1e8] with one int", _with(good, k=declared_tensor(int32, [huge],
                                                                        int_val=[5])), invalid),
        ("shape product overflows int64",
         _with(good, query=declared_tensor(string, [2 ** 40, 2 ** 40], [b"x"])), invalid),
        ("negative dimension", _with(good, query=declared_tensor(string, [-1], [b"x"])),
         invalid),
        ("unknown rank", _with(good, query=declared_tensor(string, [], [b"x"],
                                                           unknown_rank=True)), invalid),
        ("10,000 rows", predict_request(model, ["a"] * 10_000, k=5), invalid),
        ("1 MB query", predict_request(model, ["x" * (1 << 20)], k=5), invalid),
        ("blank query", predict_request(model, ["   "], k=5), invalid),
        ("k = 2^31-1", predict_request(model, ["drill"], k=2 ** 31 - 1), invalid),
        ("k = -1", predict_request(model, ["drill"], k=-1), invalid),
        ("query as int64", _with(good, query=tensors.from_ndarray(np.array([1], np.int64))),
         invalid),
        ("unknown input", _with(good, nope=declared_tensor(string, [1], [b"x"])), invalid),
        ("unknown model", predict_request("no_such_model", ["drill"]),
         grpc.StatusCode.NOT_FOUND),
        ("malformed protobuf bytes", b"\x0a\xff\xff\xff\xff\x0f\x12\x03abc\xff", invalid),
        ("truncated protobuf bytes", good.SerializeToString()[:-3], invalid),
        ("message over the receive limit", lambda: b"\x0a" + _varint(max_message_bytes + 16)
         + bytes(max_message_bytes + 16), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def call_raw(channel, payload, timeout: float = 10.0):
    """Sends a PredictRequest, raw bytes or a function making them to Predict; returns the
    grpc.StatusCode."""
    if callable(payload):
        payload = payload()
    if not isinstance(payload, bytes):
        payload = payload.SerializeToString()
    method = channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                                 response_deserializer=None)
    try:
        method(payload, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def hostile_rest_cases(model: str = "dpsr"):
    """[(name, method, path, headers, body, expected HTTP status)] of hostile REST calls; bodies
    are bytes, headers a dict (a "Content-Length" there overrides the real one: a lie)."""
    import json  # pylint: disable=g-import-not-at-top
    predict = f"/v1/models/{model}:predict"

    def body(obj):
        return json.dumps(obj).encode()

    def nested(depth):
        return "[" * depth + '"x"' + "]" * depth
    return [
        ("body declares 200 MB", "POST", predict, {"Content-Length": str(200 << 20)}, b"", 413),
        ("Content-Length not a number", "POST", predict, {"Content-Length": "12abc"}, b"{}",
         400),
        ("not JSON", "POST", predict, {}, b"{\"inputs\": [", 400),
        ("not UTF-8", "POST", predict, {}, b"\xff\xfe{}", 400),
        ("JSON nested 100,000 deep", "POST", predict, {},
         ('{"inputs": {"query": ' + nested(100_000) + "}}").encode(), 400),
        ("tensor nested 40 deep", "POST", predict, {},
         ('{"inputs": {"query": ' + nested(40) + "}}").encode(), 400),
        ("signature_name is a list", "POST", predict, {},
         body({"signature_name": ["a"], "inputs": {"query": ["drill"]}}), 400),
        ("signature_name is an object", "POST", predict, {},
         body({"signature_name": {"a": 1}, "inputs": {"query": ["drill"]}}), 400),
        ("k Infinity", "POST", predict, {}, b'{"inputs": {"query": ["drill"], "k": Infinity}}',
         400),
        ("k NaN", "POST", predict, {}, b'{"inputs": {"query": ["drill"], "k": NaN}}', 400),
        ("k 1e20", "POST", predict, {}, b'{"inputs": {"query": ["drill"], "k": 1e20}}', 400),
        ("k 2^40", "POST", predict, {}, body({"inputs": {"query": ["drill"], "k": 2 ** 40}}),
         400),
        ("k true", "POST", predict, {}, body({"inputs": {"query": ["drill"], "k": True}}), 400),
        ("k 2.5", "POST", predict, {}, body({"inputs": {"query": ["drill"], "k": 2.5}}), 400),
        ("k \"5\"", "POST", predict, {}, body({"inputs": {"query": ["drill"], "k": "5"}}), 400),
        ("k 0", "POST", predict, {}, body({"inputs": {"query": ["drill"], "k": 0}}), 400),
        ("10,000 instances", "POST", predict, {}, body({"instances": ["a"] * 10_000}), 400),
        ("1 MB query", "POST", predict, {}, body({"instances": ["x" * (1 << 20)]}), 400),
        ("invalid base64", "POST", predict, {}, body({"instances": [{"b64": "!!"}]}), 400),
        ("ragged", "POST", predict, {}, body({"inputs": {"query": [["a"], ["b", "c"]]}}), 400),
        ("both instances and inputs", "POST", predict, {},
         body({"instances": ["a"], "inputs": {"query": ["a"]}}), 400),
        ("version beyond int64", "GET", f"/v1/models/{model}/versions/99999999999999999999",
         {}, b"", 400),
        ("unknown model", "POST", "/v1/models/no_such_model:predict", {},
         body({"instances": ["drill"]}), 404),
        ("unknown path", "GET", "/v2/../../etc/passwd", {}, b"", 404),
    ]


def send_http(host: str, port: int, method: str, path: str, headers: dict, body: bytes,
              timeout: float = 10.0):
    """One HTTP/1.1 request on a new connection; returns (status, body bytes)."""
    import http.client  # pylint: disable=g-import-not-at-top
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = dict(headers)
        sent.setdefault("Content-Length", str(len(body)))
        sent.setdefault("Content-Type", "application/json")
        for key, value in sent.items():
            conn.putheader(key, value)
        conn.endheaders()
        if body:
            conn.send(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _stat(path: str) -> Optional[Tuple[str, List[str]]]:
    """(name, the fields after it) of a /proc stat file, None once the process or thread is
    gone. The name is in parentheses and may itself hold spaces and parentheses."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    name, fields = stat.split("(", 1)[1].rsplit(")", 1)
    return name, fields.split()


def _stat_of(pid: int, tid: Optional[int] = None) -> List[str]:
    """The fields after the name of process `pid`'s stat file, or of its thread `tid`'s;
    OSError once it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    stat = _stat(path)
    if stat is None:
        raise ProcessLookupError(f"{path}: no such process or thread")
    return stat[1]


def _cpu(fields: List[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def cpu_seconds(pid: int, tid: Optional[int] = None) -> float:
    """User + system CPU seconds of thread `tid` of process `pid` so far, or of the whole
    process when `tid` is None (Linux /proc)."""
    return _cpu(_stat_of(pid, tid))


def minor_faults(pid: int) -> int:
    """Minor page faults of process `pid` so far (pages it touched for the first time)."""
    return int(_stat_of(pid)[7])


def thread_stats(pid: int) -> List[Tuple[int, str, float]]:
    """(tid, name, CPU seconds) of every live thread of process `pid`."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        stat = _stat(f"/proc/{pid}/task/{task}/stat")
        if stat is not None:   # None: a thread that ended
            out.append((int(task), stat[0], _cpu(stat[1])))
    return out


def children(pid: int) -> List[Tuple[int, str]]:
    """(pid, name) of the live child processes of `pid` (Linux /proc)."""
    found = []
    for child in os.listdir("/proc"):
        if not child.isdigit():
            continue
        stat = _stat(f"/proc/{child}/stat")
        if stat is None:
            continue
        name, fields = stat
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(child), name))
    return found


def stop_process(pid: int) -> None:
    """SIGSTOPs `pid` and returns once every thread of it has stopped. The signal is not
    synchronous: the thread it is delivered to starts the group stop when it next runs, and
    until then another thread already on a CPU goes on (on a loaded host, long enough to answer
    a call sent after the kill)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        for task in os.listdir(f"/proc/{pid}/task"):
            stat = _stat(f"/proc/{pid}/task/{task}/stat")
            if stat is not None and stat[1][0] not in ("T", "t"):  # None: a thread that ended
                return False
        return True
    waiting.wait_until(stopped, f"every thread of process {pid} to stop", poll_s=0.005)


def raw_predict_call(address: str, *options):
    """(channel, its Predict method on serialized requests), on a connection of its own (a
    client of its own to the native front end); `options`: more channel options."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                      *options])
    return channel, channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                                        response_deserializer=None)


def future_code(future) -> str:
    """The status name a call's future ended with ("OK", "CANCELLED", ...)."""
    try:
        future.result()
        return "OK"
    except grpc.FutureCancelledError:
        return "CANCELLED"
    except grpc.RpcError as e:
        return e.code().name


def admitted_all_but_one(call, request: bytes, n: int, whose: str) -> list:
    """Sends `n` calls at once on `call` (a raw_predict_call method) to a native front end
    that admits all but one of them; once that one is refused RESOURCE_EXHAUSTED (its queue
    full), returns the others. Which one is refused is not fixed: the front end's threads may
    take a connection's streams in another order than they were sent."""
    futures = [call.future(request, timeout=120) for _ in range(n)]
    waiting.wait_until(lambda: any(f.done() for f in futures), f"{whose} queue full")
    refused = [f for f in futures if f.done()]
    assert [future_code(f) for f in refused] == ["RESOURCE_EXHAUSTED"]
    return [f for f in futures if f not in refused]


@contextlib.contextmanager
def python_server_stopped(server):
    """The Python server stopped (SIGSTOP, every thread) and continued on exit: what its
    native front end admits stays at the server, what it queues stays queued."""
    stop_process(server.proc.pid)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def front_end_pid(server_pid: int) -> Optional[int]:
    """The server's native front end (its dpsr_front_end child; the newest, after a restart),
    None with the Python one."""
    pids = [p for p, name in children(server_pid) if name == "dpsr_front_end"]
    return max(pids) if pids else None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def peak_rss_growth(pid: int, work: Callable[[], Any], every_s: float = 0.005) -> tuple:
    """(peak RSS of process `pid` while work() runs minus its RSS before, work()'s result):
    the RSS is sampled every `every_s` seconds on a thread until work() returns."""
    before = rss_bytes(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return peak[0] - before, result


def prometheus_samples(url: str) -> list:
    """[(sample name, labels dict, value)] of a Prometheus text page (a server's or the proxy's
    monitoring endpoint)."""
    text = requests.get(url, timeout=30).text
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric_total(url: str, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(value for sample, got, value in prometheus_samples(url)
               if sample == name and all(got.get(k) == v for k, v in labels.items()))
