"""FairRunQueue: clients in turn, abandoned tasks never started, bounds, the gate, and errors
that hold no frames. The threads are gated by events the test sets, so every assertion is
about order and counts."""
import gc
import threading
import time

import grpc
import pytest

from dpsr_tf.serving import capacity
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.runs import run_queue
from dpsr_tf.serving.model_server.runs.run_queue import (CANCELLED, EXPIRED, GATE_REFUSED, STARTED,
                                                    WAIT, FairRunQueue, run_cost)


class _Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event, label, ahead):
        with self.lock:
            self.events.append((event, label, ahead))


def _blocked_queue(threads=1, max_queued=100, per_client=100, gate=None,
                   run_clock=time.monotonic):
    """A queue whose threads are all busy until `release` is set."""
    recorder = _Recorder()
    queue = FairRunQueue(threads, max_queued, per_client, on_event=recorder, gate=gate,
                         run_clock=run_clock)
    release = threading.Event()
    blockers = [queue.submit("blocker", release.wait, (), None, "blocker")
                for _ in range(threads)]
    while sum(e[0] == STARTED for e in recorder.events) < threads:
        time.sleep(0.001)
    return queue, recorder, release, blockers


def test_clients_take_turns():
    queue, recorder, release, _ = _blocked_queue()
    order = []
    futures = [queue.submit("flood", order.append, (f"flood{i}",), None, "flood")
               for i in range(50)]
    futures.append(queue.submit("other", order.append, ("other",), None, "other"))
    release.set()
    for f in futures:
        f.result(timeout=30)
    queue.close()
    # The flood's first task was at the head when "other" arrived; then "other" runs.
    assert order.index("other") == 1, order
    assert [o for o in order if o != "other"] == [f"flood{i}" for i in range(50)]
    ahead = [a for e, label, a in recorder.events if e == STARTED and label == "other"]
    assert ahead == [1]


def test_a_client_of_expensive_runs_waits_while_cheap_runs_go_first():
    """Clients share the threads by the run time they use: after one 0.2 s run (40 quanta)
    of the heavy client, the light client's cheap runs all go before its next one. Runs are
    timed by a clock the tasks advance, so the order does not depend on the machine."""
    clock = [0.0]
    queue, _, release, _ = _blocked_queue(run_clock=lambda: clock[0])
    order = []

    def heavy(name):
        clock[0] += 0.2
        order.append(name)

    futures = [queue.submit("heavy", heavy, (f"h{i}",), None, "heavy") for i in range(3)]
    futures += [queue.submit("light", order.append, (f"l{i}",), None, "light")
                for i in range(5)]
    release.set()
    for f in futures:
        f.result(timeout=30)
    queue.close()
    assert order == ["h0", "l0", "l1", "l2", "l3", "l4", "h1", "h2"], order
    assert run_cost(0.2) == 40 and run_cost(0.0) == 1 and run_cost(0.011) == 2


def test_a_client_that_arrives_later_gets_turns_not_credit():
    """A client that arrives while another has used many runs starts level with it: the two
    alternate, the newcomer does not run its whole backlog first (runs timed by a clock that
    stands still: every run costs one quantum)."""
    queue, _, release, _ = _blocked_queue(run_clock=lambda: 0.0)
    order, late = [], []

    def early(i):
        order.append(f"a{i}")
        if i == 4:  # the late client arrives while the early one is running
            late.extend(queue.submit("late", order.append, (f"b{j}",), None, "late")
                        for j in range(5))

    futures = [queue.submit("early", early, (i,), None, "early") for i in range(12)]
    release.set()
    for f in futures:
        f.result(timeout=30)
    for f in late:
        f.result(timeout=30)
    queue.close()
    assert order[:5] == ["a0", "a1", "a2", "a3", "a4"]
    assert order[5:15] == ["b0", "a5", "b1", "a6", "b2", "a7", "b3", "a8", "b4", "a9"], order


def _started_count(recorder, label):
    with recorder.lock:
        return sum(e == STARTED and l == label for e, l, _ in recorder.events)


def _taught_queue(threads, max_short, sizes):
    """A queue of `threads` threads and at most `max_short` short runs whose tasks of each
    size in `sizes` ({size: seconds}) have run once, timed by a clock the tasks advance."""
    clock = [0.0]
    recorder = _Recorder()
    queue = FairRunQueue(threads, 100, 100, on_event=recorder, max_running_short=max_short,
                         run_clock=lambda: clock[0])

    def advance(seconds):
        clock[0] += seconds

    for size, seconds in sizes.items():
        queue.submit("teach", advance, (seconds,), None, "teach", size=size).result(timeout=30)
    return queue, recorder


def _held_then_released(queue, recorder, label, release, futures):
    """Asserts that all of `futures` (tasks of `label`) but one started and one waits; then
    releases them and asserts that the waiting one ran too."""
    assert _started_count(recorder, label) == len(futures) - 1 and queue.queued == 1
    release.set()
    for f in futures:
        f.result(timeout=30)
    queue.close()
    assert _started_count(recorder, label) == len(futures)


def test_short_runs_hold_at_most_their_bound_and_longer_runs_take_the_rest():
    """Four threads, at most two short runs at once. One task of size "s" took 1 ms and one of
    size "l" 20 ms (a clock the tasks advance): of three short clients' tasks of size "s" two
    start and the third waits although threads are idle; a task of size "l" then starts on an
    idle thread at once, and so does one of a size never run (were either held, its result
    would wait for the release and time out)."""
    queue, recorder = _taught_queue(4, 2, {("s", 1): 0.001, ("l", 1): 0.02})
    release = threading.Event()
    shorts = [queue.submit(f"short{i}", release.wait, (), None, "short", size=("s", 1))
              for i in range(3)]
    while _started_count(recorder, "short") < 2:
        time.sleep(0.001)
    assert queue.queued == 1
    long_run = queue.submit("long", lambda: "L", (), None, "long", size=("l", 1))
    assert long_run.result(timeout=30) == "L"
    unknown = queue.submit("new", lambda: "N", (), None, "new", size=("never run", 1))
    assert unknown.result(timeout=30) == "N"
    _held_then_released(queue, recorder, "short", release, shorts)


def test_a_task_is_short_when_its_size_ran_within_the_short_run_time():
    """One short run at once, three threads. Size "a" once took 1.9 ms, size "b" 2.1 ms (a
    clock the tasks advance; the bound is SHORT_RUN_SECONDS = 2 ms): while an "a" task holds
    the short slot a second "a" task waits with threads idle, and a "b" task and a task with
    no size start beside it (were either held, its result would time out)."""
    assert run_queue.SHORT_RUN_SECONDS == 0.002
    queue, recorder = _taught_queue(3, 1, {("a", 1): 0.0019, ("b", 1): 0.0021})
    release = threading.Event()
    held = [queue.submit(f"a{i}", release.wait, (), None, "a", size=("a", 1)) for i in range(2)]
    while _started_count(recorder, "a") < 1:
        time.sleep(0.001)
    assert queue.submit("b", lambda: "B", (), None, "b", size=("b", 1)).result(timeout=30) == "B"
    assert queue.submit("none", lambda: "N", (), None, "none").result(timeout=30) == "N"
    _held_then_released(queue, recorder, "a", release, held)


def test_expired_and_cancelled_tasks_never_run():
    queue, recorder, release, _ = _blocked_queue()
    ran = []
    expired = queue.submit("a", ran.append, ("expired",), time.monotonic() - 1, "m")
    cancelled = queue.submit("a", ran.append, ("cancelled",), None, "m")
    kept = queue.submit("a", ran.append, ("kept",), time.monotonic() + 600, "m")
    assert cancelled.cancel()
    release.set()
    kept.result(timeout=30)
    queue.close()
    assert ran == ["kept"]
    with pytest.raises(ServingError) as e:
        expired.result()
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    events = [e for e, label, _ in recorder.events if label == "m"]
    assert events == [EXPIRED, CANCELLED, STARTED]


def test_a_burst_on_idle_threads_holds_at_most_its_bound_and_its_cancelled_rest_never_runs():
    """Four idle threads, a bound of two per client: a burst of eight starts two; another
    client's task starts on a third thread while those two still run; the burst's cancelled
    tasks never start, and its kept one starts only when one of its two runs has ended."""
    recorder = _Recorder()
    queue = FairRunQueue(4, 100, 100, on_event=recorder, max_running_per_client=2)
    release = threading.Event()
    burst = [queue.submit("burst", release.wait, (), None, "burst") for _ in range(7)]
    kept_ran = threading.Event()
    kept = queue.submit("burst", kept_ran.set, (), None, "burst")
    other = queue.submit("other", lambda: "answered", (), None, "other")
    assert other.result(timeout=30) == "answered"   # while the burst's two runs block
    started = [label for e, label, _ in recorder.events if e == STARTED]
    assert started.count("burst") == 2, recorder.events
    for f in burst[2:]:
        assert f.cancel()                            # the client gave up on the rest
    assert not kept_ran.is_set()
    release.set()
    kept.result(timeout=30)
    queue.close()
    events = [e for e, label, _ in recorder.events if label == "burst"]
    assert events.count(STARTED) == 3 and events.count(CANCELLED) == 5, events


@pytest.mark.parametrize("per_client,max_queued,code", [
    (3, 100, grpc.StatusCode.RESOURCE_EXHAUSTED), (100, 3, grpc.StatusCode.UNAVAILABLE)])
def test_queue_bounds(per_client, max_queued, code):
    queue, _, release, _ = _blocked_queue(max_queued=max_queued, per_client=per_client)
    for _ in range(3):
        queue.submit("a", lambda: None, (), None)
    with pytest.raises(ServingError) as e:
        queue.submit("a", lambda: None, (), None)
    assert e.value.code == code
    release.set()
    queue.close()


def test_a_gated_client_waits_while_others_run_and_a_refusal_drops_its_task():
    state = {"b": WAIT}
    queue, recorder, release, _ = _blocked_queue(gate=lambda client: state.get(client))
    ran = []
    waiting = queue.submit("b", ran.append, ("b",), None, "b")
    others = [queue.submit("c", ran.append, (f"c{i}",), None, "c") for i in range(3)]
    release.set()
    for f in others:
        f.result(timeout=30)
    assert ran == ["c0", "c1", "c2"] and not waiting.done()
    state["b"] = ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "over budget")
    queue.wake()
    with pytest.raises(ServingError) as e:
        waiting.result(timeout=30)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ran == ["c0", "c1", "c2"]
    assert (GATE_REFUSED, "b", None) in recorder.events
    queue.close()


def test_a_failed_task_leaves_no_reference_cycle():
    """The error a task fails with holds no traceback, so what the task referenced is freed
    at once, not by a garbage collection (the server's heap is frozen; collections are rare)."""
    queue = FairRunQueue(1, 10, 10)

    def fail(payload):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"bad payload of {len(payload)}")

    gc.collect()
    gc.disable()
    try:
        future = queue.submit("a", fail, (bytearray(1 << 20),), None)
        error = future.exception(timeout=30)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.__traceback__ is None and error.__context__ is None
        del future, error
        queue.close()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_default_run_threads_per_client_is_half_the_threads_at_most_the_cores(monkeypatch):
    """--max_run_threads_per_client=0: half of --num_run_threads rounded up, capped by the
    cores this process may use (its affinity mask), never below 1."""
    assert capacity.running_per_client(8, cores=2) == 2
    assert capacity.running_per_client(8, cores=16) == 4
    assert capacity.running_per_client(7, cores=64) == 4
    assert capacity.running_per_client(1, cores=2) == 1
    monkeypatch.setattr(capacity.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert capacity.usable_cores() == 3
    assert capacity.running_per_client(8) == 3
    assert capacity.running_per_client(4) == 2


def test_a_standing_queue_is_refused_at_once_and_another_client_still_runs():
    """The queue delay control on a fake clock (target 10 ms, interval 100 ms): the flood's
    queue (threads blocked) stands above the target for the interval, so its next task is
    refused at once, counted, while another client's task is queued and runs."""
    now = [0.0]
    recorder = _Recorder()
    queue = FairRunQueue(1, 100, 100, on_event=recorder, queue_target=0.010,
                         queue_interval=0.100, clock=lambda: now[0])
    release = threading.Event()
    blocker = queue.submit("flood", release.wait, (), None, "flood")
    while not recorder.events:
        time.sleep(0.001)
    order = []
    admitted = []
    for t in (0.0, 0.005, 0.020, 0.119):   # the interval starts at 20 ms
        now[0] = t
        admitted.append(queue.submit("flood", order.append, (f"flood@{t}",), None, "flood"))
    now[0] = 0.121
    with pytest.raises(ServingError) as refused:
        queue.submit("flood", order.append, ("refused",), None, "flood")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in refused.value.message
    other = queue.submit("other", order.append, ("other",), None, "other")
    release.set()
    for f in [blocker, other] + admitted:
        f.result(timeout=30)
    queue.close()
    assert "refused" not in order and len(order) == 5
    assert [e for e, label, _ in recorder.events if e == run_queue.OVERLOADED] == [
        run_queue.OVERLOADED]


def test_a_deadline_before_the_expected_turn_is_refused_at_once():
    """Run time measured 100 ms (a task that advances the run clock), one thread, a target
    (10 s) that never refuses here: a task with 2 waiting ahead expects 300 ms; a deadline
    250 ms away is refused at once, one 60 s away waits."""
    now = [0.0]
    run_clock = [0.0]

    def timed():
        run_clock[0] += 0.1

    recorder = _Recorder()
    queue = FairRunQueue(1, 100, 100, on_event=recorder, queue_target=10.0,
                         run_clock=lambda: run_clock[0], clock=lambda: now[0])
    queue.submit("a", timed, (), None, "a").result(timeout=30)   # measures 100 ms
    release = threading.Event()
    started = threading.Event()
    blocker = queue.submit("a", lambda: (started.set(), release.wait()), (), None, "a")
    assert started.wait(30)
    waiting = [queue.submit("a", lambda: None, (), None, "a") for _ in range(2)]
    with pytest.raises(ServingError) as late:
        queue.submit("a", lambda: None, (), 0.250, "a")
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    waiting.append(queue.submit("a", lambda: None, (), time.monotonic() + 60, "a"))
    now[0] = time.monotonic()   # deadlines are on time.monotonic: 60 s is ample
    release.set()
    for f in [blocker] + waiting:
        f.result(timeout=30)
    queue.close()
    assert [e for e, _, _ in recorder.events if e == run_queue.TOO_LATE] == [run_queue.TOO_LATE]
