"""Large unbatched requests run in chunks of rows and stop between chunks once abandoned
(dpsr_tf/serving/model_server/runs/chunked_runs.py).

The unit tests drive ChunkedRuns with a NumPy `run` (its answers are checked against the
request run whole); the ServerCore tests run the toy servable. Counts of session runs, never
times: a fake clock stands in for the deadline."""
import os
import shutil
import threading

import grpc
import numpy as np
import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.runs import chunked_runs
from dpsr_tf.serving.model_server.runs.chunked_runs import ChunkedRuns
from dpsr_tf.serving.model_server.lifecycle.servable import SavedModelServable
from dpsr_tf.serving.model_server.api.server_core import CoreOptions, ServerCore
from tests.support import server_metrics
from tests.support.server_metrics import METRICS_PATH
from tests.support.serving_testing import outputs, predict_request


class _Model:
    """run(feeds, timeout): per row, the row's value times `scale` plus k, in a [rows, width]
    answer; counts its calls and the rows of each."""

    def __init__(self, width=lambda rows: 3):
        self.rows = []
        self.width = width

    def __call__(self, feeds, timeout_s):
        x, k = feeds["x"], feeds["k"]
        self.rows.append(len(x))
        width = self.width(len(x))
        return {"y": x[:, None] * np.arange(width)[None, :] + k, "n": x * 2}


def _assert_same_answer(got: np.ndarray, whole: np.ndarray):
    """Ids and strings exactly; scores to float32 rounding, since the CPU kernels block a
    32-row matmul differently from a 70-row one (a last-bit difference, not a wrong row)."""
    if np.issubdtype(whole.dtype, np.floating):
        assert got.shape == whole.shape
        np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, whole)


def _feeds(rows):
    return {"x": np.arange(rows, dtype=np.float32), "k": np.array(5.0, np.float32)}


def test_a_large_request_runs_in_chunks_and_stacks_to_the_whole_answer():
    model = _Model()
    run, stop = ChunkedRuns(32).wrap("sig", model, 70, ("x",), True)
    got = run(_feeds(70), None)
    assert model.rows == [32, 32, 6]
    whole = _Model()(_feeds(70), None)
    assert set(got) == {"y", "n"}
    for alias in got:
        np.testing.assert_array_equal(got[alias], whole[alias])
    assert not stop.is_set()


@pytest.mark.parametrize("rows, batched, batchable, chunk_rows", [
    (32, ("x",), True, 32),      # not more rows than a chunk
    (None, (), True, 32),        # not batch-major
    (70, ("x",), False, 32),     # an output is not batch-major
    (70, ("x",), True, 0),       # chunking off
])
def test_requests_that_run_whole(rows, batched, batchable, chunk_rows):
    assert ChunkedRuns(chunk_rows).wrap("sig", _Model(), rows, batched, batchable) is None


def test_negative_chunk_rows_other_than_auto_are_refused():
    with pytest.raises(ValueError, match="rows per run must be >= 0"):
        ChunkedRuns(-2)


def _cancelled_during(model: _Model, rows: int, chunk: int) -> ServingError:
    """Runs `rows` rows in chunks of 32 through `model`, the caller giving up while chunk
    number `chunk` (0-based) runs; the error the run raised (CANCELLED is asserted)."""
    stops = []

    def run(feeds, timeout_s):
        answer = model(feeds, timeout_s)
        if len(model.rows) == chunk + 1:
            stops[0].set()
        return answer

    wrapped, stop = ChunkedRuns(32).wrap("sig", run, rows, ("x",), True)
    stops.append(stop)
    with pytest.raises(ServingError) as e:
        wrapped(_feeds(rows), None)
    assert e.value.code == grpc.StatusCode.CANCELLED
    return e.value


def test_a_request_stopped_after_its_first_chunk_runs_no_other():
    model = _Model()
    error = _cancelled_during(model, 256, chunk=0)
    assert "after 32 of 256 rows" in error.message
    assert model.rows == [32]  # the other 224 rows never ran


def test_a_request_whose_deadline_passes_stops_before_its_next_chunk(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(chunked_runs.time, "monotonic", lambda: clock[0])
    model = _Model()

    def run(feeds, timeout_s):
        clock[0] += 0.03  # each chunk takes 30 ms of the fake clock
        return model(feeds, timeout_s)

    wrapped, _ = ChunkedRuns(32).wrap("sig", run, 256, ("x",), True)
    with pytest.raises(ServingError) as e:
        wrapped(_feeds(256), 0.05)  # 50 ms: two chunks start, the third does not
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert model.rows == [32, 32]


def test_chunks_of_different_widths_run_again_whole_and_never_chunk_again():
    model = _Model(width=lambda rows: rows % 7)  # 32 rows -> 4 columns, 6 rows -> 6
    runs = ChunkedRuns(32)
    wrapped, _ = runs.wrap("sig", model, 70, ("x",), True)
    got = wrapped(_feeds(70), None)
    assert model.rows == [32, 32, 6, 70]
    assert got["y"].shape == (70, 0)  # the whole request's own answer (70 % 7 == 0)
    assert runs.unchunkable("sig")
    assert runs.wrap("sig", model, 70, ("x",), True) is None
    assert runs.wrap("other", model, 70, ("x",), True) is not None


@pytest.fixture
def counted_runs(monkeypatch):
    """The rows of every session run of the toy servable, in order."""
    rows = []
    real = SavedModelServable.run

    def run(self, signature, feeds, fetches, timeout_s=None):
        rows.append(len(feeds["query"]))
        return real(self, signature, feeds, fetches, timeout_s)

    monkeypatch.setattr(SavedModelServable, "run", run)
    return rows


def _core(model_dir, rows_per_run):
    core = ServerCore(CoreOptions(max_rows_per_run=rows_per_run, num_run_threads=1))
    core.start(config_lib.single_model_config("dpsr", model_dir))
    return core


def test_the_server_answers_a_chunked_request_as_it_answers_it_whole(toy_model_dir,
                                                                     counted_runs):
    request = predict_request("dpsr", [f"cordless drill {i}" for i in range(70)], k=20)
    answers = {}
    for rows_per_run in (0, 32):
        core = _core(toy_model_dir, rows_per_run)
        try:
            del counted_runs[:]
            answers[rows_per_run] = outputs(core.predict(request, 60).result(60))
            assert counted_runs == ([70] if rows_per_run == 0 else [32, 32, 6])
        finally:
            core.stop()
    assert set(answers[0]) == set(answers[32])
    for alias, whole in answers[0].items():
        _assert_same_answer(answers[32][alias], whole)


def test_auto_chunks_only_servables_written_by_dpsr_export(toy_model_dir, tmp_path,
                                                         counted_runs):
    # The info file the export writes makes a version's rows independent; the same model
    # without it runs whole, as TF Serving.
    from dpsr_tf.export import servable_info  # pylint: disable=g-import-not-at-top
    marked = tmp_path / "marked"
    shutil.copytree(toy_model_dir, marked)
    for version in os.listdir(marked):
        os.makedirs(marked / version / "assets.extra", exist_ok=True)
        (marked / version / "assets.extra" / servable_info.SERVABLE_INFO).write_text("{}")
    request = predict_request("dpsr", [f"cordless drill {i}" for i in range(70)], k=20)
    assert CoreOptions().max_rows_per_run == chunked_runs.AUTO
    runs = {}
    for name, model_dir in (("plain", toy_model_dir), ("marked", str(marked))):
        core = _core(model_dir, chunked_runs.AUTO)
        try:
            del counted_runs[:]
            core.predict(request, 60).result(60)
            runs[name] = list(counted_runs)
        finally:
            core.stop()
    assert runs == {"plain": [70], "marked": [32, 32, 6]}


def test_rows_per_run_of_auto_and_of_a_number():
    auto, fixed, never = ChunkedRuns(chunked_runs.AUTO), ChunkedRuns(8), ChunkedRuns(0)
    assert [auto.rows_per_run(True), auto.rows_per_run(False)] == [
        chunked_runs.AUTO_CHUNK_ROWS, 0]
    assert [fixed.rows_per_run(True), fixed.rows_per_run(False)] == [8, 8]
    assert [never.rows_per_run(True), never.rows_per_run(False)] == [0, 0]


def test_a_cancelled_request_stops_after_the_chunk_in_progress(toy_model_dir, monkeypatch):
    armed, started, release, rows = threading.Event(), threading.Event(), threading.Event(), []
    real = SavedModelServable.run

    def run(self, signature, feeds, fetches, timeout_s=None):
        if armed.is_set():  # not the warm-up run of the load
            rows.append(len(feeds["query"]))
            if len(rows) == 1:
                started.set()
                assert release.wait(60)
        return real(self, signature, feeds, fetches, timeout_s)

    monkeypatch.setattr(SavedModelServable, "run", run)
    core = _core(toy_model_dir, 32)
    armed.set()
    try:
        future = core.predict(predict_request("dpsr", [f"q {i}" for i in range(256)], k=10),
                              60)
        assert started.wait(60)
        assert future.cancel()  # as the gRPC handler does when its client cancels
        release.set()
        # The next request runs after the cancelled one's thread is free again.
        follow = core.predict(predict_request("dpsr", ["cordless drill"], k=5), 60).result(60)
        assert len(outputs(follow)["item_ids"][0]) == 5
        assert rows == [32, 1]  # one chunk of the 256 rows, then the next request
    finally:
        release.set()
        core.stop()


def test_dpsr_serve_runs_requests_in_chunks_of_its_flag(toy_model_dir, tmp_path):
    # The flag reaches the server: a 70-row request through gRPC is answered as the core
    # answers it whole, in three session runs (the runtime latency histogram counts runs).
    (tmp_path / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    server = process.start_model_server(
        toy_model_dir, model_name="dpsr", rest=True, log_dir=str(tmp_path),
        flags=["--max_rows_per_run=32",
               f"--monitoring_config_file={tmp_path / 'monitoring.config'}"])
    request = predict_request("dpsr", [f"cordless drill {i}" for i in range(70)], k=20)
    try:
        before = _session_runs(server)
        served = outputs(process.prediction_stub(server.address).Predict(request, timeout=60))
        assert _session_runs(server) - before == 3
    finally:
        assert server.stop() == 0, server.log_tail()
    core = _core(toy_model_dir, 0)
    try:
        whole = outputs(core.predict(request, 60).result(60))
    finally:
        core.stop()
    for alias, value in whole.items():
        _assert_same_answer(served[alias], value)


def _session_runs(server) -> float:
    return sum(v for (name, _), v in server_metrics.metrics(server).items()
               if name == "dpsr_serving_runtime_latency_seconds_count")


def test_a_request_cancelled_during_its_last_chunk_is_not_run_again_whole():
    model = _Model(width=lambda rows: rows % 7)  # the chunks' widths differ (4, 4, 6)
    _cancelled_during(model, 70, chunk=2)
    assert model.rows == [32, 32, 6]  # no whole rerun of the 70 rows
