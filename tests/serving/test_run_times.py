"""The fastest runs seen (run_times.py), and the unbatched run queue dropping a request that
cannot finish in its time left (the batch scheduler's case: test_batching.py)."""
import time

import grpc
import pytest

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.runs.run_queue import EXPIRED, STARTED, FairRunQueue
from dpsr_tf.serving.model_server.runs.run_times import FastestRuns
from tests.support import waiting


def test_only_runs_of_no_more_rows_bound_a_request():
    """A smaller batch may be faster, so only runs of at most the request's rows bound it; the
    bound is the slowest of them, each the fastest of its power-of-two size class."""
    runs = FastestRuns()
    runs.record("k", 2, 2.0)
    runs.record("k", 3, 3.0)   # the same size class (2-3 rows), slower: not kept
    runs.record("k", 8, 8.0)
    assert runs.least_seconds("k", 1) is None and runs.least_seconds("other", 4) is None
    assert runs.least_seconds("k", 2) == 2.0 and runs.least_seconds("k", 7) == 2.0
    assert runs.least_seconds("k", 8) == 8.0
    runs.record("k", 9, 1.0)   # class 8-15: the faster 9-row run replaces the 8-row one
    assert runs.least_seconds("k", 8) == 2.0 and runs.least_seconds("k", 9) == 2.0
    # What the batcher and the run queue ask: late when the time left is under the bound.
    assert runs.cannot_finish("k", 9, 2.0) is None and runs.cannot_finish("k", 1, 0.0) is None
    assert runs.cannot_finish("k", 9, 1.5) == ("deadline exceeded: 1500.0 ms left, and a run of "
                                               "9 rows has taken at least 2000.0 ms on this "
                                               "model; not run")


def test_keys_are_bounded_least_recent_first():
    runs = FastestRuns(max_keys=2)
    runs.record("a", 1, 1.0)
    runs.record("b", 1, 1.0)
    runs.record("a", 1, 0.5)   # "a" ran last
    runs.record("c", 1, 1.0)   # "b" is forgotten
    assert runs.least_seconds("b", 1) is None
    assert runs.least_seconds("a", 1) == 0.5 and runs.least_seconds("c", 1) == 1.0


def test_the_run_queue_drops_a_task_that_cannot_finish():
    events = []
    ran = []
    queue = FairRunQueue(1, 8, 8, on_event=lambda e, label, _: events.append((e, label)))
    asked = []

    def cannot_finish(left):
        asked.append(left)
        return "cannot finish" if left < 60 else None

    try:
        late = queue.submit("c", ran.append, ("late",), time.monotonic() + 30, "m",
                            cannot_finish)
        with pytest.raises(ServingError) as e:
            late.result(timeout=waiting.STALL_S)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.value.message == "cannot finish"
        on_time = queue.submit("c", ran.append, ("on time",), time.monotonic() + 600, "m",
                               cannot_finish)
        no_deadline = queue.submit("c", ran.append, ("no deadline",), None, "m",
                                   cannot_finish)
        on_time.result(timeout=waiting.STALL_S)
        no_deadline.result(timeout=waiting.STALL_S)
    finally:
        queue.close()
    assert ran == ["on time", "no deadline"]
    assert len(asked) == 2 and 0 < asked[0] <= 30 and 60 < asked[1] <= 600  # not w/o deadline
    assert events == [(EXPIRED, "m"), (STARTED, "m"), (STARTED, "m")]
