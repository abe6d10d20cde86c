"""tensorflow.ProfilerService on `dpsr serve`'s gRPC port (TF Serving registers it there).

[server_test] test_profiler_service_with_valid_trace_request of tensorflow_model_server_test.py:
TensorFlow's own profiler client (`tf.profiler.experimental.client.trace`, the C++ gRPC client
TensorBoard uses) captures a profile from the model server's port while requests run; the
XSpace written is checked for the server's session runs. Then the service's own contract: an
early Terminate, one profile at a time, bad requests refused with the right code, and the
service absent with --enable_profiler=false.
"""
import glob
import os
import threading

import grpc
import numpy as np
import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors
from dpsr_tf.serving.model_server.api.profiler_service import _message_classes
from tests.serving import tfs_testdata
from tests.support import waiting
from tests.support.serving_testing import rpc_error

MESSAGES = _message_classes()
RPC_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("profiler")
    tfs_testdata.half_plus_two_tf1(str(base / "half_plus_two" / "123"))
    on = process.model_server_process(str(base / "half_plus_two"), "default",
                                      name="profiler_on")
    off = process.model_server_process(str(base / "half_plus_two"), "default",
                                       name="profiler_off", flags=["--enable_profiler=false"])
    process.start_all([on, off])
    yield {"on": on, "off": off}
    on.stop()
    off.stop()


def _predict(stub, x):
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    tensors.from_ndarray(np.array([[x]], np.float32), request.inputs["x"])
    return tensors.to_ndarray(stub.Predict(request, RPC_TIMEOUT).outputs["y"])


class _Traffic:
    """A thread sending Predict until stopped; counts answers (all must be 0.5x + 2)."""

    def __init__(self, address):
        self.stub = process.prediction_stub(address)
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            x = float(self.answers % 7)
            assert _predict(self.stub, x).tolist() == [[0.5 * x + 2.0]]
            self.answers += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _call(address, method, request):
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(f"/tensorflow.ProfilerService/{method}")
    return call(request if isinstance(request, bytes) else request.SerializeToString(),
                timeout=RPC_TIMEOUT)


def _profile_request(root, session="s1", host="127.0.0.1:1", duration_ms=500):
    request = MESSAGES["ProfileRequest"](repository_root=str(root), session_id=session,
                                         host_name=host)
    request.opts.duration_ms = duration_ms
    return request


def test_trace_with_tensorflows_profiler_client(servers, tmp_path):
    from tensorflow.python.profiler import profiler_client  # pylint: disable=g-import-not-at-top
    server = servers["on"]
    logdir = str(tmp_path / "logs")
    os.makedirs(logdir)
    with _Traffic(server.address) as traffic:
        waiting.wait_until(lambda: traffic.answers >= 3, "traffic")
        profiler_client.trace(f"grpc://{server.address}", logdir, duration_ms=1000,
                              num_tracing_attempts=3)
        seen = traffic.answers
        waiting.wait_until(lambda: traffic.answers > seen + 3, "traffic after the profile")
    (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert os.path.basename(path) == server.address.replace(":", "_") + ".xplane.pb"
    with open(path, "rb") as f:
        space = xplane_pb2.XSpace.FromString(f.read())
    names = {m.name for plane in space.planes for m in plane.event_metadata.values()}
    events = sum(len(line.events) for plane in space.planes for line in plane.lines)
    assert events > 0
    # The server's own work was traced: the session runs of the Predict requests.
    assert any("SessionRun" in n for n in names), sorted(names)[:50]


def test_an_idle_profile_is_not_empty(servers, tmp_path):
    """With no request running, the trace still holds the server's own work, as TF Serving's
    idle traces do: the capture itself, a span as long as the profile (empty_trace false)."""
    response = MESSAGES["ProfileResponse"].FromString(
        _call(servers["on"].address, "Profile", _profile_request(tmp_path, session="idle",
                                                                 duration_ms=300)))
    assert not response.empty_trace
    with open(tmp_path / "idle" / "127.0.0.1_1.xplane.pb", "rb") as f:
        space = xplane_pb2.XSpace.FromString(f.read())
    spans = [event.duration_ps for plane in space.planes for line in plane.lines
             for event in line.events
             if plane.event_metadata[event.metadata_id].name == "ProfilerService::Profile"]
    assert len(spans) == 1 and spans[0] >= 300 * 10 ** 9  # ps: at least the 300 ms asked


def test_terminate_ends_a_profile_early(servers, tmp_path):
    address = servers["on"].address
    result = {}

    def profile():  # ten minutes unless terminated; retried while a probe holds the profiler
        request = _profile_request(tmp_path, session="long", duration_ms=10 * 60 * 1000)
        while "response" not in result:
            try:
                result["response"] = _call(address, "Profile", request)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    result["error"] = e
                    return

    def busy():  # a zero-length profile, refused while the long one runs
        try:
            _call(address, "Profile", _profile_request(tmp_path, session="probe", duration_ms=0))
            return False
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            return True

    thread = threading.Thread(target=profile)
    thread.start()
    # While the long profile runs, another is refused: one profiler per process.
    waiting.wait_until(busy, "the long profile to start", poll_s=0.2)
    _call(address, "Terminate", MESSAGES["TerminateRequest"](session_id="other"))
    assert thread.is_alive()  # another session's id changes nothing
    _call(address, "Terminate", MESSAGES["TerminateRequest"](session_id="long"))
    thread.join(RPC_TIMEOUT)
    assert not thread.is_alive() and "response" in result, result
    MESSAGES["ProfileResponse"].FromString(result["response"])  # (no traffic: may be empty)
    assert os.path.isfile(tmp_path / "long" / "127.0.0.1_1.xplane.pb")
    # Free again: a short profile succeeds.
    _call(address, "Profile", _profile_request(tmp_path, session="after", duration_ms=100))
    assert os.path.isfile(tmp_path / "after" / "127.0.0.1_1.xplane.pb")


@pytest.mark.parametrize("case,code", [
    ("relative_root", grpc.StatusCode.INVALID_ARGUMENT),
    ("session_escapes", grpc.StatusCode.INVALID_ARGUMENT),
    ("host_escapes", grpc.StatusCode.INVALID_ARGUMENT),
    ("empty_session", grpc.StatusCode.INVALID_ARGUMENT),
    ("too_long", grpc.StatusCode.INVALID_ARGUMENT),
    ("garbage", grpc.StatusCode.INVALID_ARGUMENT),
    ("monitor", grpc.StatusCode.UNIMPLEMENTED),
])
def test_bad_requests_are_refused_and_the_server_keeps_serving(servers, tmp_path, case, code):
    address = servers["on"].address
    request = {
        "relative_root": _profile_request("logs"),
        "session_escapes": _profile_request(tmp_path, session="../../escape"),
        "host_escapes": _profile_request(tmp_path, host="../escape"),
        "empty_session": _profile_request(tmp_path, session=""),
        "too_long": _profile_request(tmp_path, duration_ms=10 ** 12),
        "garbage": b"\xff\xff\xff",
        "monitor": b"",
    }[case]
    method = "Monitor" if case == "monitor" else "Profile"
    assert rpc_error(_call, address, method, request).code() == code
    for escape in ("../../escape", "../escape"):
        assert not os.path.exists(os.path.normpath(os.path.join(tmp_path, escape)))
    assert not glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
    assert _predict(process.prediction_stub(address), 4.0).tolist() == [[4.0]]


def test_enable_profiler_false_leaves_the_service_out(servers, tmp_path):
    error = rpc_error(_call, servers["off"].address, "Profile", _profile_request(tmp_path))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
