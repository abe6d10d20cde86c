"""The queue of unbatched session runs: clients served in turn, abandoned work never started.

One FIFO per client (a gRPC connection, or one REST key), served round robin by a fixed set of
threads, so a client with thousands of queued requests delays another client's request by
about one run per thread, not by its whole backlog. A task whose deadline passed or whose
future was cancelled while it waited (the client gave up: the gRPC handler cancels it from
the call's done-callback) is dropped when it reaches the head of the queue, without running.
The queue is bounded across all clients; beyond the bound `submit` raises UNAVAILABLE
(retriable: another replica or a later retry), as the batch scheduler does when its queue is
full.
"""
import collections
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Hashable, Optional

import grpc

from dpsr_tf.serving.errors import ServingError

_LOG = logging.getLogger("serving.run_queue")

# What happened to a task at the head of the queue (the `on_event` callback's first argument).
STARTED = "started"
EXPIRED = "deadline_exceeded"
CANCELLED = "cancelled"
REFUSED = "queue_full"


class _Task:
    __slots__ = ("fn", "args", "deadline", "label", "future", "started_before")

    def __init__(self, fn, args, deadline, label, started_before):
        self.fn = fn
        self.args = args
        self.deadline = deadline
        self.label = label
        self.future = concurrent.futures.Future()
        self.started_before = started_before


class FairRunQueue:
    """Runs `fn(*args)` on `num_threads` threads, one FIFO per client, clients in turn.

    Args:
      num_threads: threads that run tasks.
      max_queued: most tasks waiting (not yet started), all clients together.
      on_event: optional callback(event, label, runs_ahead) for metrics: event is STARTED
        (runs_ahead: how many tasks of any client started while this one waited), EXPIRED,
        CANCELLED or REFUSED (runs_ahead None).
      thread_name: prefix of the threads' names.
    """

    def __init__(self, num_threads: int, max_queued: int,
                 on_event: Optional[Callable] = None, thread_name: str = "run"):
        self._max_queued = max_queued
        self._on_event = on_event or (lambda *_: None)
        self._queues = collections.OrderedDict()  # client -> deque of _Task
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
               label: str = "") -> concurrent.futures.Future:
        """Queues `fn(*args)` for `client`.

        Args:
          client: whose task it is (tasks of one client run in order; clients take turns).
          fn, args: the work; its result or exception completes the returned future.
          deadline: time.monotonic() after which the task is dropped unstarted, or None.
          label: passed to `on_event` (a model name for metrics).

        Returns:
          A Future; cancel() it to drop the task if it has not started. A dropped task's
          future fails with ServingError(DEADLINE_EXCEEDED) or is cancelled.

        Raises:
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
            task = _Task(fn, args, deadline, label, self._started)
            queue = self._queues.get(client)
            if queue is None:
                queue = self._queues[client] = collections.deque()
            queue.append(task)
            self._queued += 1
            self._cond.notify()
        return task.future

    def close(self) -> None:
        """Runs (or drops, when expired or cancelled) the queued tasks, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def _take(self) -> Optional[_Task]:
        with self._cond:
            while not self._queued:
                if self._closed:
                    return None
                self._cond.wait()
            client, queue = next(iter(self._queues.items()))
            task = queue.popleft()
            if queue:  # this client goes to the back of the line
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
            self._queued -= 1
            return task

    def _loop(self) -> None:
        while True:
            task = self._take()
            if task is None:
                return
            self._run(task)
            task = None  # the finished task's arguments are not kept while the thread waits

    def _run(self, task: _Task) -> None:
        future = task.future
        if not future.set_running_or_notify_cancel():
            self._on_event(CANCELLED, task.label, None)
            return
        if task.deadline is not None and time.monotonic() >= task.deadline:
            self._on_event(EXPIRED, task.label, None)
            future.set_exception(ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the request's deadline passed while it waited for a run thread; it was not "
                "run (the server is busy: send fewer concurrent requests or add replicas)"))
            return
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
        else:
            future.set_result(result)


def _plain(error: BaseException) -> Exception:
    """A ServingError with the code and message of `error` and no traceback or context."""
    if isinstance(error, ServingError):
        return ServingError(error.code, error.message)
    _LOG.error("a run failed: %s: %s", type(error).__name__, error, exc_info=error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
