"""The queue of unbatched session runs: clients share the run threads by the time their runs
take, abandoned work never started.

One FIFO per client (a gRPC connection, or one REST key), served by a fixed set of threads in
the order of the run time each client has used (start-time fair queuing): the next task is the
head of the client that has used the least, counted in quanta of COST_QUANTUM_SECONDS of run
wall time, and a client that arrives starts level with the one served last (no credit from
being idle). Clients whose runs cost alike take turns; a client whose runs take 50 ms waits
while another's 2 ms runs go first, about 25 of them per run of its own, so a client with
thousands of queued expensive requests delays another client's request by about one run per
thread, not by its backlog and not by the cost of its requests. A task whose deadline passed or whose
future was cancelled while it waited (the client gave up: the gRPC handler cancels it from
the call's done-callback) is dropped when it reaches the head of the queue, without running.
A gate, asked when a task reaches the head of its queue, can hold a client back or refuse
its task: while a client holds more unsent answers than its budget (unsent_answers.py) its
tasks wait and other clients' run, so it cannot make the server compute answers faster than
it takes them; while all clients together are over budget, tasks are refused unstarted.

Short runs (expected to hold their thread SHORT_RUN_SECONDS or less, building the answer
included: the fastest task of their size seen) hold at most `max_running_short` threads at
once, by default the cores + 1 (capacity.short_runs); runs not known to be short may take
every thread. Alike short calls at the knee then share the GIL and the cores a few at a time
instead of eight at once (docs/benchmarks.md, "Short runs bounded"), while long runs from many
connections still leave short calls threads of their own: with 3 threads in all, a short call
waited for one of theirs to end.

A client holds at most `max_running_per_client` threads at once: a burst that finds every
thread idle would otherwise start on all of them before its client cancels it (a started run
cannot be stopped), and the next client's request would wait for one of those runs. By default
(capacity.running_per_client) that is half the threads but no more than the machine's cores:
one client's runs beyond the cores add nothing to its own rate (its queued runs start as soon
as one ends) and only take CPU from the other clients' runs.

The queue is bounded per client (beyond it: RESOURCE_EXHAUSTED, the client's own quota) and
across all clients (beyond it: UNAVAILABLE, retriable on another replica, as the batch
scheduler answers when its queue is full). Past capacity a client's queue is also bounded in
time (queue_delay.py, the native front end's rule): once its oldest task has waited past the
delay target for a whole interval, its new tasks are refused at once (RESOURCE_EXHAUSTED), and
a task whose deadline ends before its expected turn is refused at once (DEADLINE_EXCEEDED),
instead of both waiting in the queue until their deadline.
"""
import collections
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Hashable, Optional, Tuple

import grpc

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.runs.run_times import FastestRuns
from dpsr_tf.serving.queue_delay import QueueDelay

_LOG = logging.getLogger("serving.run_queue")

# What happened to a task at the head of the queue (the `on_event` callback's first argument).
STARTED = "started"
EXPIRED = "deadline_exceeded"
CANCELLED = "cancelled"
REFUSED = "queue_full"
CLIENT_REFUSED = "client_queue_full"
GATE_REFUSED = "unsent_answers"
OVERLOADED = "overloaded"
TOO_LATE = "deadline_before_turn"
# What a gate returns to make a client's task wait.
WAIT = "wait"
# The queue delay control's default interval (queue_delay.py).
QUEUE_INTERVAL_SECONDS = 0.1
# The unit of run time that clients are charged in (runs shorter than this cost one unit, so
# clients of cheap runs take strict turns).
COST_QUANTUM_SECONDS = 0.005
# Runs this short are mostly a call's fixed work (decoding, answer building, hand-offs), which
# the GIL serializes anyway: more of them side by side than the cores + 1 add hand-offs, not
# throughput (a single query of the 1M default servable for 1,000 results: 0.7-1.2 ms alone,
# its answer built). A 64-query request for 300 results each took 3.3-4.4 ms of a 240-item
# servable: bounded with the short ones (at 5 ms), 300 connections of one such request each
# kept normal calls waiting for the few short slots (docs/benchmarks.md, "Short runs bounded").
SHORT_RUN_SECONDS = 0.002


def run_cost(seconds: float) -> int:
    """The charge of a run that took `seconds`: whole quanta, at least one."""
    return max(1, int(seconds / COST_QUANTUM_SECONDS))


class _Task:
    __slots__ = ("client", "fn", "args", "deadline", "label", "future", "started_before",
                 "charged", "cannot_finish", "since", "size", "short")

    def __init__(self, client, fn, args, deadline, label, started_before, cannot_finish, since,
                 size):
        self.client = client
        self.size = size  # (key, rows) of the work, or None
        self.short = None  # known to be short (None: not known yet)
        self.fn = fn
        self.args = args
        self.deadline = deadline
        self.label = label
        self.cannot_finish = cannot_finish
        self.future = concurrent.futures.Future()
        self.started_before = started_before
        self.charged = 0  # cost units charged to the client when the task started
        self.since = since  # when it was queued (the queue delay clock)


class FairRunQueue:
    """Runs `fn(*args)` on `num_threads` threads, one FIFO per client, clients in turn.

    Args:
      num_threads: threads that run tasks.
      max_queued: most tasks waiting (not yet started), all clients together.
      max_queued_per_client: most tasks of one client waiting.
      max_running_per_client: most tasks of one client running at once (0: no bound): a
        client's further tasks wait while it holds that many threads, so a burst that arrives
        on idle threads leaves threads for the next client (its runs cannot be stopped once
        started, even when the burst is cancelled a moment later).
      max_running_short: most short tasks (whose size has run in SHORT_RUN_SECONDS or less)
        running at once, all clients together (0: no bound); tasks not known to be short are
        not bound.
      on_event: optional callback(event, label, runs_ahead) for metrics: event is STARTED
        (runs_ahead: how many tasks of any client started while this one waited), EXPIRED,
        CANCELLED, REFUSED, CLIENT_REFUSED, GATE_REFUSED, OVERLOADED or TOO_LATE
        (runs_ahead None).
      thread_name: prefix of the threads' names.
      run_clock: the clock that times runs for the clients' charges (tests pass their own).
      gate: optional callable(client) -> None (run), WAIT (the client's tasks wait; they
        are still dropped when cancelled or expired) or a ServingError (the task fails with
        it, unstarted); called from the run threads. Call `wake()` when a WAIT may have
        ended.
      queue_target, queue_interval: the queue delay control (queue_delay.py), in seconds:
        a client whose oldest waiting task has waited past the target (or the measured run
        time, if longer) for a whole interval has new tasks refused at once; target 0: off
        (`dpsr serve --front_end=python` sets --front_end_queue_target_ms).
      clock: the clock of queue delays and expected waits (time.monotonic, as deadlines).
    """

    # While every queued client is blocked, threads look again this often (`wake` is sooner).
    BLOCKED_POLL_SECONDS = 0.1

    def __init__(self, num_threads: int, max_queued: int, max_queued_per_client: int,
                 on_event: Optional[Callable] = None, thread_name: str = "run",
                 gate: Optional[Callable] = None,
                 run_clock: Callable[[], float] = time.monotonic,
                 max_running_per_client: int = 0,
                 max_running_short: int = 0,
                 queue_target: float = 0.0,
                 queue_interval: float = QUEUE_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._max_queued = max_queued
        self._max_per_client = max_queued_per_client
        self._max_running = max_running_per_client
        self._max_short = max_running_short
        self._short_running = 0
        self._task_times = FastestRuns()  # how long tasks held their thread, by size
        self._on_event = on_event or (lambda *_: None)
        self._gate = gate or (lambda _client: None)
        self._run_clock = run_clock
        self._clock = clock
        self._delay = QueueDelay(queue_target, queue_interval)
        self._queues = collections.OrderedDict()  # client -> deque of _Task
        # Clients with tasks queued or running: cost units used, the cost of their last run,
        # tasks running. The virtual time: what the client served last had used then.
        self._used = {}
        self._last_cost = {}
        self._running = collections.Counter()
        self._virtual_time = 0
        self._queued = 0
        self._started = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, daemon=True,
                                          name=f"{thread_name}_{i}")
                         for i in range(max(1, num_threads))]
        for t in self._threads:
            t.start()

    @property
    def queued(self) -> int:
        """Tasks waiting to start."""
        return self._queued

    def submit(self, client: Hashable, fn: Callable, args: tuple, deadline: Optional[float],
               label: str = "",
               cannot_finish: Optional[Callable[[float], Optional[str]]] = None,
               size: Optional[Tuple[Hashable, int]] = None) -> concurrent.futures.Future:
        """Queues `fn(*args)` for `client`.

        Args:
          client: whose task it is (tasks of one client run in order; clients take turns).
          fn, args: the work; its result or exception completes the returned future.
          deadline: time.monotonic() after which the task is dropped unstarted, or None.
          label: passed to `on_event` (a model name for metrics).
          cannot_finish: optional cannot_finish(seconds left) -> a message when the work
            cannot finish in that time (run_times.py), else None; asked when the task would
            start, and a task it answers is dropped unstarted (DEADLINE_EXCEEDED, counted as
            EXPIRED).
          size: optional (key, rows) of the work: the task is expected to take as long as the
            fastest task of that key and as many rows or fewer (run_times.py's rule), and is
            short when that is SHORT_RUN_SECONDS or less (max_running_short); without it, the
            task is never short.

        Returns:
          A Future; cancel() it to drop the task if it has not started. A dropped task's
          future fails with ServingError(DEADLINE_EXCEEDED) or is cancelled.

        Raises:
          ServingError(RESOURCE_EXHAUSTED): the client has max_queued_per_client waiting, or
            its queue has stood above the delay target for an interval (overloaded).
          ServingError(DEADLINE_EXCEEDED): the deadline ends before the task's expected turn.
          ServingError(UNAVAILABLE): the queue is full or the server is stopping.
        """
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if self._queued >= self._max_queued:
                self._on_event(REFUSED, label, None)
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"the run queue is full ({self._max_queued} requests waiting, "
                                   "--max_queued_requests); retry later or add replicas")
            queue = self._queues.get(client)
            if queue is not None and len(queue) >= self._max_per_client:
                self._on_event(CLIENT_REFUSED, label, None)
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"this client has {len(queue)} requests waiting for a run "
                                   "thread (--max_queued_requests_per_client); wait for their "
                                   "answers before sending more")
            now = self._clock()
            self._refuse_if_late(client, queue, deadline, label, now)
            task = _Task(client, fn, args, deadline, label, self._started, cannot_finish, now,
                         size)
            self._used.setdefault(client, self._virtual_time)
            if queue is None:
                queue = self._queues[client] = collections.deque()
            queue.append(task)
            self._queued += 1
            if ((not self._max_running or self._running[client] < self._max_running)
                    and not self._short_held(task)):
                # A client at its bound of running tasks, or a short task while the short
                # runs are at theirs, gets no thread woken: it can start only when one of
                # those runs ends, and the thread that ran that takes the next task itself
                # (_loop). A woken thread would find nothing to start and wait again: two
                # thread switches per call for nothing.
                self._cond.notify()
        return task.future

    def _refuse_if_late(self, client, queue, deadline, label, now) -> None:
        """Raises when `client`'s queue stands above the delay target, or when a task of it
        with `deadline` could not start before it (self._cond held)."""
        if self._delay.standing(client, queue[0].since if queue else None, now):
            self._on_event(OVERLOADED, label, None)
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"overloaded: this client's requests have waited more than "
                f"{self._delay.target * 1000:.1f} ms for a run thread for "
                f"{self._delay.interval * 1000:.0f} ms; send fewer at once, or retry on another "
                "replica")
        if deadline is None or not queue or not self._delay.on:
            return
        share = self._max_running or len(self._threads)
        wait = self._delay.expected_wait(len(queue), share)
        if wait > deadline - now:
            self._on_event(TOO_LATE, label, None)
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request's deadline ends in {max(0.0, deadline - now) * 1000:.0f} ms, "
                f"before its turn for a run thread (about {wait * 1000:.0f} ms: {len(queue)} "
                "requests of this client wait ahead of it); not run")

    def wake(self) -> None:
        """Tells the threads that a blocked client may be unblocked (any thread)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Runs (or drops, when expired or cancelled) the queued tasks, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def _eligible(self, client, task: _Task, now: float) -> bool:
        if (self._closed or task.future.cancelled()
                or (task.deadline is not None and now >= task.deadline)):
            return True  # dropped (or run at close) without waiting
        if self._max_running and self._running[client] >= self._max_running:
            return False
        if self._short_held(task):
            return False
        return self._gate(client) is not WAIT

    def _short_held(self, task: _Task) -> bool:
        """Whether `task` is short while the short runs are at their bound (self._cond
        held)."""
        return bool(self._max_short and self._short_running >= self._max_short
                    and self._short(task))

    def _short(self, task: _Task) -> bool:
        """Whether `task` is known to be short (self._cond held)."""
        if task.short is None and task.size is not None:
            seconds = self._task_times.least_seconds(*task.size)
            if seconds is not None:
                task.short = seconds <= SHORT_RUN_SECONDS
        return bool(task.short)

    def _take(self) -> Optional[_Task]:
        with self._cond:
            while True:
                if not self._queued:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                # The least-used eligible client; among equals, the longest waiting.
                client = min((c for c, q in self._queues.items()
                              if self._eligible(c, q[0], now)),
                             key=self._used.__getitem__, default=None)
                if client is not None:
                    break
                self._cond.wait(self.BLOCKED_POLL_SECONDS)  # every queued client is blocked
            queue = self._queues[client]
            task = queue.popleft()
            if queue:  # this client goes to the back of the line
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
                self._delay.forget(client)
            self._queued -= 1
            self._virtual_time = self._used[client]
            task.charged = self._last_cost.get(client, 1)  # corrected when the run ends
            self._used[client] += task.charged
            self._running[client] += 1
            task.short = self._short(task)  # as counted until it ends
            self._short_running += task.short
            return task

    def _loop(self) -> None:
        while True:
            task = self._take()
            if task is None:
                return
            start = self._run_clock()
            ran = False
            leaving = True  # the thread ends here unless _run returns
            try:
                ran = self._run(task)
                leaving = False
            finally:
                seconds = self._run_clock() - start
                if ran and task.size is not None:
                    self._task_times.record(*task.size, seconds)
                self._settle(task.client, task.charged, run_cost(seconds),
                             seconds if ran else None, leaving, task.short)
            task = None  # the finished task's arguments are not kept while the thread waits

    def _settle(self, client, charged: int, cost: int, seconds: Optional[float],
                leaving: bool = False, short: bool = False) -> None:
        """Charges a finished run its measured cost (and times the run, `seconds`, when it
        ran); forgets a client with nothing left. The thread that ran it looks for its next
        task at once (_take), so no other thread is woken for the client's next one unless
        this thread is `leaving` (its run raised past _run)."""
        with self._cond:
            if seconds is not None:
                self._delay.observe_service(seconds)
            self._used[client] += cost - charged
            self._last_cost[client] = cost
            self._running[client] -= 1
            self._short_running -= short
            if leaving:
                self._cond.notify()  # a task this run held back may start now
            if not self._running[client]:
                del self._running[client]
                if client not in self._queues:
                    del self._used[client]
                    del self._last_cost[client]

    def _run(self, task: _Task) -> bool:
        """Runs or drops `task`; True when its work ran."""
        future = task.future
        if not future.set_running_or_notify_cancel():
            self._on_event(CANCELLED, task.label, None)
            return False
        if task.deadline is not None and time.monotonic() >= task.deadline:
            self._on_event(EXPIRED, task.label, None)
            future.set_exception(ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the request's deadline passed while it waited for a run thread; it was not "
                "run (the server is busy: send fewer concurrent requests or add replicas)"))
            return False
        if task.deadline is not None and task.cannot_finish is not None:
            late = task.cannot_finish(task.deadline - time.monotonic())
            if late is not None:
                self._on_event(EXPIRED, task.label, None)
                future.set_exception(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, late))
                return False
        refusal = None if self._closed else self._gate(task.client)
        if isinstance(refusal, ServingError):
            self._on_event(GATE_REFUSED, task.label, None)
            future.set_exception(refusal)
            return False
        with self._cond:
            ahead = self._started - task.started_before
            self._started += 1
        self._on_event(STARTED, task.label, ahead)
        try:
            result = task.fn(*task.args)
        except BaseException as e:  # pylint: disable=broad-except
            # A fresh error: the caught one's traceback holds this frame and the task's
            # arguments, and the future would keep them alive in a reference cycle.
            future.set_exception(_plain(e))
            return True
        else:
            future.set_result(result)
        return True


def _plain(error: BaseException) -> Exception:
    """A ServingError with the code and message of `error` and no traceback or context."""
    if isinstance(error, ServingError):
        return ServingError(error.code, error.message)
    _LOG.error("a run failed: %s: %s", type(error).__name__, error, exc_info=error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
