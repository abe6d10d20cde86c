"""The batch scheduler with a recording run function: batches form under concurrency, every
request gets exactly its rows back, deadlines and queue bounds are enforced, padding works."""
import threading
import time

import grpc
import numpy as np
import pytest

from dpsr_tf.serving.model_server.runs.batching import BatchScheduler
from dpsr_tf.serving.model_server.runs.run_queue import WAIT
from dpsr_tf.serving.config import BatchingOptions
from dpsr_tf.serving.errors import ServingError
from tests.support import waiting


class _Recorder:
    """run_fn that doubles `x`, records batch sizes, and can be slowed down."""

    def __init__(self, delay=0.0):
        self.batches = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, feeds, timeout):
        del timeout
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2 + feeds["bias"]}


class _Gated(_Recorder):
    """A _Recorder whose runs wait for `release` after setting `started`: a test holds the
    batch thread exactly as long as it needs, whatever the machine's speed."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, feeds, timeout):
        self.started.set()
        assert self.release.wait(waiting.STALL_S), "never released"
        return super().__call__(feeds, timeout)


def _submit(scheduler, run, x, bias=0, deadline=None, key="k"):
    feeds = {"x": np.asarray(x, np.float32), "bias": np.float32(bias)}
    return scheduler.submit((key, bias), feeds, feeds["x"].shape[0], ("x",), run, deadline)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_concurrent_requests_share_batches_and_get_their_rows(num_threads):
    run = _Recorder(delay=0.02)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=16, num_batch_threads=num_threads))
    try:
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((int(rng.integers(1, 4)),)) for _ in range(40)]
        futures = [_submit(scheduler, run, x) for x in inputs]
        for x, f in zip(inputs, futures):
            np.testing.assert_allclose(f.result(timeout=waiting.STALL_S)["y"], np.float32(x) * 2)
        assert max(run.batches) > 1 and max(run.batches) <= 16
        assert sum(run.batches) == sum(len(x) for x in inputs)
    finally:
        scheduler.close()


def test_different_keys_never_share_a_batch():
    run = _Recorder(delay=0.01)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=64, num_batch_threads=1))
    try:
        futures = [(_submit(scheduler, run, [1.0], bias=b % 2), b % 2) for b in range(20)]
        for f, bias in futures:
            assert f.result(timeout=waiting.STALL_S)["y"].tolist() == [2.0 + bias]
    finally:
        scheduler.close()


def test_expired_deadline_is_deadline_exceeded_and_not_run():
    run = _Gated()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, num_batch_threads=1))
    try:
        blocker = _submit(scheduler, run, [1.0])
        assert run.started.wait(waiting.STALL_S)  # the only batch thread is busy
        deadline = time.monotonic() + 0.05
        late = _submit(scheduler, run, [2.0], deadline=deadline)
        waiting.wait_until(lambda: time.monotonic() > deadline, "the deadline", poll_s=0.01)
        run.release.set()
        blocker.result(timeout=waiting.STALL_S)
        with pytest.raises(ServingError) as e:
            late.result(timeout=waiting.STALL_S)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert run.batches == [1]
    finally:
        scheduler.close()


def test_a_request_that_cannot_finish_before_its_deadline_is_not_run():
    run = _Recorder(delay=2.0)  # every run takes at least 2 s, however fast the machine
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, num_batch_threads=2))
    try:
        timing = _submit(scheduler, run, [1.0, 2.0])  # the key's fastest 2-row run: >= 2 s
        assert timing.result(timeout=waiting.STALL_S)["y"].tolist() == [2.0, 4.0]
        # 3 rows take no less than 2 rows did; 0.9 s left is under that: not run.
        hopeless = _submit(scheduler, run, [1.0, 2.0, 3.0], deadline=time.monotonic() + 0.9)
        with pytest.raises(ServingError) as e:
            hopeless.result(timeout=waiting.STALL_S)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "not run" in e.value.message and "3 rows" in e.value.message
        # Time enough, or a key never timed: they run (the untimed one on the second thread).
        hopeful = _submit(scheduler, run, [3.0], deadline=time.monotonic() + waiting.STALL_S)
        untimed = _submit(scheduler, run, [5.0], bias=1, deadline=time.monotonic() + 0.9)
        assert hopeful.result(timeout=waiting.STALL_S)["y"].tolist() == [6.0]
        assert untimed.result(timeout=waiting.STALL_S)["y"].tolist() == [11.0]
        assert sorted(run.batches) == [1, 1, 2]
    finally:
        scheduler.close()


def test_full_queue_is_unavailable_and_oversized_task_invalid():
    run = _Gated()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=1,
                                               num_batch_threads=1))
    try:
        first = _submit(scheduler, run, [1.0, 1.0])
        assert run.started.wait(waiting.STALL_S)  # running, out of the queue
        _submit(scheduler, run, [1.0, 1.0])  # fills the queue
        with pytest.raises(ServingError) as e:
            _submit(scheduler, run, [1.0])
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ServingError) as e:
            _submit(scheduler, run, [1.0, 2.0, 3.0])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        run.release.set()
        first.result(timeout=waiting.STALL_S)
    finally:
        scheduler.close()


def test_batches_are_padded_to_allowed_sizes():
    run = _Recorder(delay=0.05)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8),
                                               num_batch_threads=1))
    try:
        futures = [_submit(scheduler, run, [float(i)]) for i in range(6)]
        assert [f.result(timeout=waiting.STALL_S)["y"].tolist() for f in futures] == [
            [2.0 * i] for i in range(6)]
        assert all(b in (4, 8) for b in run.batches)
    finally:
        scheduler.close()


def test_run_error_reaches_every_task_of_the_batch():
    def failing(feeds, timeout):
        del feeds, timeout
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad k")

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    try:
        futures = [_submit(scheduler, failing, [1.0]) for _ in range(3)]
        for f in futures:
            with pytest.raises(ServingError, match="bad k"):
                f.result(timeout=waiting.STALL_S)
    finally:
        scheduler.close()


# -------------------------------------------------------------------- regressions

def _width_run(batches):
    """run_fn over "h" [rows, width] strings: each row's count of non-empty values (so padding
    with "" does not change an answer), recording each batch's shape."""
    def run(feeds, timeout):
        del timeout
        batches.append(feeds["h"].shape)
        h = feeds["h"]
        return {"n": np.array([[sum(1 for v in row if v)] for row in h], np.int32)}
    return run


def _submit_h(scheduler, run, rows):
    h = np.array(rows, dtype=object)
    return scheduler.submit("key", {"h": h}, h.shape[0], ("h",), run, None)


def _hold(scheduler):
    """Occupies the only batch thread until the returned event is set, so the next submits
    queue up and form one batch."""
    started, release = threading.Event(), threading.Event()

    def hold(feeds, timeout):
        del timeout
        started.set()
        release.wait(waiting.STALL_S)
        return {"y": feeds["x"]}

    scheduler.submit("hold", {"x": np.zeros(1)}, 1, ("x",), hold, None)
    assert started.wait(waiting.STALL_S)
    return release


def test_inputs_of_different_widths_are_padded_with_pad_variable_length_inputs():
    # Before the fix np.concatenate raised outside the run's try: the batch thread died
    # and these futures (and every later request) never completed.
    batches = []
    run = _width_run(batches)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1,
                                               pad_variable_length_inputs=True))
    try:
        release = _hold(scheduler)
        a = _submit_h(scheduler, run, [[b"i1", b"i2", b"i3"]])
        b = _submit_h(scheduler, run, [[b"i4"], [b"i5"]])
        release.set()
        assert a.result(timeout=waiting.STALL_S)["n"].tolist() == [[3]]
        assert b.result(timeout=waiting.STALL_S)["n"].tolist() == [[1], [1]]
        assert batches == [(3, 3)]  # one run, the narrow rows padded with "" to width 3
    finally:
        scheduler.close()


def test_a_batch_that_cannot_be_assembled_fails_only_its_requests():
    batches = []
    run = _width_run(batches)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    try:
        release = _hold(scheduler)
        a = _submit_h(scheduler, run, [[b"i1", b"i2", b"i3"]])
        b = _submit_h(scheduler, run, [[b"i4"]])
        release.set()
        for f in (a, b):
            with pytest.raises(ServingError) as e:
                f.result(timeout=waiting.STALL_S)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "pad_variable_length_inputs" in e.value.message
        # The batch thread lives on: the next request is answered.
        assert _submit_h(scheduler, run, [[b"i9", b""]]).result(timeout=waiting.STALL_S)["n"].tolist() == [[1]]
    finally:
        scheduler.close()


def test_a_failing_run_fails_its_batch_and_not_the_next():
    calls = []

    def run(feeds, timeout):
        del timeout
        calls.append(feeds["x"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom in the session run")
        return {"y": feeds["x"] * 2}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    try:
        first = scheduler.submit("k", {"x": np.ones(2)}, 2, ("x",), run, None)
        with pytest.raises(RuntimeError, match="boom"):
            first.result(timeout=waiting.STALL_S)
        second = scheduler.submit("k", {"x": np.ones(1)}, 1, ("x",), run, None)
        assert second.result(timeout=waiting.STALL_S)["y"].tolist() == [2.0]
    finally:
        scheduler.close()


# -------------------------------------------------------------------- fairness between clients

def _submit_as(scheduler, run, client, x, key="k"):
    feeds = {"x": np.asarray(x, np.float32), "bias": np.float32(0)}
    return scheduler.submit((key, 0), feeds, feeds["x"].shape[0], ("x",), run, None, client)


def _code(future):
    try:
        future.result(timeout=waiting.STALL_S)
    except ServingError as e:
        return e.code
    return grpc.StatusCode.OK


def test_a_client_that_fills_the_queue_pushes_out_its_own_tasks_not_another_clients():
    # The queue holds 4 rows; "flood" fills it while the only batch thread is held. Before
    # the fix "normal" was refused UNAVAILABLE; now the flood's newest task is pushed out.
    run = _Gated()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=2,
                                               num_batch_threads=1))
    try:
        running = _submit_as(scheduler, run, "flood", [0.0])
        assert run.started.wait(waiting.STALL_S)  # running, out of the queue
        flood = [_submit_as(scheduler, run, "flood", [float(i)]) for i in range(4)]
        with pytest.raises(ServingError) as e:  # alone, it gets TF Serving's answer
            _submit_as(scheduler, run, "flood", [9.0])
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        normal = [_submit_as(scheduler, run, "normal", [5.0]),
                  _submit_as(scheduler, run, "normal", [6.0])]
        with pytest.raises(ServingError) as e:  # over its share (2 of 4 rows) now
            _submit_as(scheduler, run, "flood", [9.0])
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(ServingError) as e:  # normal is at its share too
            _submit_as(scheduler, run, "normal", [7.0])
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        run.release.set()
        assert [_code(f) for f in normal] == [grpc.StatusCode.OK] * 2
        assert [_code(f) for f in flood] == [grpc.StatusCode.OK] * 2 + [
            grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert running.result(timeout=waiting.STALL_S)["y"].tolist() == [0.0]
        assert normal[1].result()["y"].tolist() == [12.0]
    finally:
        scheduler.close()


def test_batches_take_the_clients_tasks_in_turn():
    # 6 queued tasks of "flood" and then 2 of "normal": batches of 2 rows take one of each,
    # so normal's tasks run in the first two batches, not after the flood's backlog.
    order = []
    gate = _Gated()

    def run(feeds, timeout):
        gate(feeds, timeout)
        order.append(feeds["x"].tolist())
        return {"y": feeds["x"]}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=8,
                                               num_batch_threads=1))
    try:
        first = _submit_as(scheduler, run, "other", [-1.0])
        assert gate.started.wait(waiting.STALL_S)
        futures = [_submit_as(scheduler, run, "flood", [float(i)]) for i in range(6)]
        futures += [_submit_as(scheduler, run, "normal", [10.0 + i]) for i in range(2)]
        gate.release.set()
        for f in [first] + futures:
            f.result(timeout=waiting.STALL_S)
        assert order == [[-1.0], [0.0, 10.0], [1.0, 11.0], [2.0, 3.0], [4.0, 5.0]]
    finally:
        scheduler.close()


def test_one_key_never_holds_every_batch_thread():
    # Two threads, and the flood's key has a backlog of batches that never end until
    # released: one thread stays for the other key (before: both ran the flood's batches and
    # the other key's request waited for one of them to end).
    flood, normal = _Gated(), _Recorder()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, max_enqueued_batches=8,
                                               num_batch_threads=2))
    try:
        backlog = [_submit_as(scheduler, flood, "flood", [float(i)], key="big")
                   for i in range(4)]
        assert flood.started.wait(waiting.STALL_S)
        other = _submit_as(scheduler, normal, "normal", [3.0], key="small")
        assert other.result(timeout=waiting.STALL_S)["y"].tolist() == [6.0]
        assert sum(f.running() for f in backlog) == 1  # the flood runs on one thread only
        flood.release.set()
        assert [_code(f) for f in backlog] == [grpc.StatusCode.OK] * 4
    finally:
        scheduler.close()


def test_max_threads_per_key_all_threads_is_tf_servings_scheduling():
    flood = _Gated()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, max_enqueued_batches=8,
                                               num_batch_threads=2, max_threads_per_key=2))
    try:
        backlog = [_submit_as(scheduler, flood, "flood", [float(i)], key="big")
                   for i in range(4)]
        waiting.wait_until(lambda: sum(f.running() for f in backlog) == 2, "two batches run")
        flood.release.set()
        assert [_code(f) for f in backlog] == [grpc.StatusCode.OK] * 4
    finally:
        scheduler.close()


def test_a_held_back_client_waits_in_the_queue_while_others_run():
    # The gate (unsent answers) holds "slow" back: its tasks stay queued, "normal"'s run;
    # once the gate opens and the scheduler is woken, they run too. Expired ones are dropped.
    held_back = {"slow"}
    run = _Recorder()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, num_batch_threads=1),
                               gate=lambda client: WAIT if client in held_back else None)
    try:
        slow = [_submit_as(scheduler, run, "slow", [float(i)]) for i in range(3)]
        held_back.add("gone")  # held back too, but its only task's deadline has passed
        expired = scheduler.submit(("k", 0), {"x": np.ones(1, np.float32),
                                              "bias": np.float32(0)},
                                   1, ("x",), run, time.monotonic(), "gone")
        normal = _submit_as(scheduler, run, "normal", [5.0])
        assert normal.result(timeout=waiting.STALL_S)["y"].tolist() == [10.0]
        assert _code(expired) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not any(f.done() for f in slow)
        held_back.clear()
        scheduler.wake()
        assert [f.result(timeout=waiting.STALL_S)["y"].tolist() for f in slow] == [
            [0.0], [2.0], [4.0]]
    finally:
        scheduler.close()
