"""Server-side batching: concurrent requests with the same batch key share one session run.

Like TF Serving's shared batch scheduler: one queue per key (servable, signature, fed inputs,
scalar input values such as k), a pool of batch threads, `batch_timeout_micros` as the longest
wait for a fuller batch, `max_enqueued_batches` as the queue bound, and padding to
`allowed_batch_sizes`. Unlike TF Serving's one FIFO per key, clients share a key's queue
fairly (batch_queue.py): a client alone may fill it (then UNAVAILABLE, as TF Serving), but a
flooding client's excess is refused or pushed out RESOURCE_EXHAUSTED rather than other
clients' requests, and batches take the clients' tasks in turn. A request whose deadline passes in the queue is answered
DEADLINE_EXCEEDED without running.

Inputs whose trailing dimensions differ between requests (e.g. two personalized requests with
histories of different widths) are padded to the widest along every dimension but the first
when `pad_variable_length_inputs` is set (TF Serving's padding: zeros, "" for strings, the
outputs keep the padded width); otherwise the caller keys requests by their trailing shapes so
they never share a batch. Whatever goes wrong inside a batch (assembling it, running it,
splitting it) fails that batch's requests only; the batch thread keeps serving.

A request that cannot finish before its deadline is not run either (run_times.py): its time
left is under the fastest run seen of a batch of no more rows of its key.
"""
import collections
import concurrent.futures
import threading
import time
from typing import Callable, Dict, Hashable, Optional

import logging

import grpc
import numpy as np

from dpsr_tf.serving.config import BatchingOptions
from dpsr_tf.serving.model_server.runs.batch_queue import KeyQueue
from dpsr_tf.serving.model_server.runs.run_queue import WAIT
from dpsr_tf.serving.model_server.runs.run_times import FastestRuns
from dpsr_tf.serving.errors import ServingError

_LOG = logging.getLogger("serving.batching")

RunFn = Callable[[Dict[str, np.ndarray], Optional[float]], Dict[str, np.ndarray]]


class _Task:
    __slots__ = ("feeds", "rows", "deadline", "future", "enqueued", "run_fn", "batched")

    def __init__(self, feeds, rows, deadline, run_fn, batched):
        self.feeds = feeds
        self.rows = rows
        self.deadline = deadline
        self.future = concurrent.futures.Future()
        self.enqueued = time.monotonic()
        self.run_fn = run_fn
        self.batched = batched


class BatchScheduler:
    """Batches tasks per key and runs them on `num_batch_threads` threads.

    At most `options.max_threads_per_key` threads (0: all but one) run batches of one key at
    once, so another key's batch finds a thread while one key has a backlog of long batches.

    Args:
      options: BatchingOptions.
      on_batch: optional callback(key, batch_rows, padded_rows) for metrics.
      gate: optional gate(client) -> run_queue.WAIT to hold a client's tasks back (they stay
        queued until their deadline; `wake()` when a WAIT may have ended), as the run
        queue's gate (unsent_answers.py: clients that do not read their answers).
    """

    # While every queued task's client is held back, threads look again this often (`wake`
    # is sooner).
    BLOCKED_POLL_SECONDS = 0.1

    def __init__(self, options: BatchingOptions, on_batch=None, gate=None):
        self._options = options
        self._on_batch = on_batch
        self._gate = gate
        self._queues = collections.OrderedDict()  # key -> KeyQueue, keys in turn
        self._running = collections.Counter()  # key -> batches running
        self.run_times = FastestRuns()  # per batch key
        self._threads_per_key = options.max_threads_per_key or max(
            1, options.num_batch_threads - 1)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, daemon=True,
                                          name=f"{options.thread_pool_name}_{i}")
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    def submit(self, key, feeds: Dict[str, np.ndarray], rows: int, batched, run_fn: RunFn,
               deadline: Optional[float], client: Hashable = None) -> concurrent.futures.Future:
        """Enqueues one request.

        Args:
          key: batch key; tasks with equal keys may share a run.
          feeds: alias -> value; aliases in `batched` have `rows` rows along dim 0.
          rows: the request's rows.
          batched: aliases concatenated along dim 0 (the others are equal across the key).
          run_fn: run_fn(feeds, timeout_s) -> alias -> value with total rows along dim 0.
          deadline: time.monotonic() deadline, or None.
          client: who sent it (e.g. the gRPC peer); clients share the key's queue fairly.

        Returns:
          Future of alias -> np.ndarray (this request's rows). A task pushed out of a full
          queue by another client's fails with ServingError(RESOURCE_EXHAUSTED).

        Raises:
          ServingError: INVALID_ARGUMENT (more rows than max_batch_size); UNAVAILABLE (the
            server is stopping, or the queue is full of this client's tasks alone);
            RESOURCE_EXHAUSTED (the queue is full and this client holds more than its share).
        """
        opts = self._options
        if rows > opts.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {rows} is larger than maximum input batch size "
                               f"{opts.max_batch_size}; send fewer rows per request")
        task = _Task(feeds, rows, deadline, run_fn, batched)
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = KeyQueue(opts.max_enqueued_batches * opts.max_batch_size)
            pushed_out = []
            queue.admit(client, task, lambda *failed: pushed_out.append(failed))
            self._queues[key] = queue
            self._cond.notify()
        for failed in pushed_out:  # their callbacks run outside the lock
            _fail(*failed)
        return task.future

    def wake(self) -> None:
        """Tells the threads that a held-back client may go on (any thread)."""
        with self._cond:
            self._cond.notify_all()

    def _eligible(self, client, task, now: float) -> bool:
        """Whether `client`'s oldest `task` may join a batch now (expired and cancelled
        tasks always may: the batch drops them)."""
        return (self._gate is None or self._closed or task.future.cancelled()
                or (task.deadline is not None and task.deadline <= now)
                or self._gate(client) != WAIT)

    def close(self) -> None:
        """Stops the threads after the queued tasks have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    # ------------------------------------------------------------------ batch threads

    def _ready_key(self, now: float):
        """The key of the queue to run now, or (None, seconds to wait)."""
        timeout = self._options.batch_timeout_micros / 1e6
        wait = None
        for key, queue in self._queues.items():
            if not queue or self._running[key] >= self._threads_per_key:
                continue  # a key at its thread cap waits for one of its batches to end
            if self._gate is not None and not queue.any_eligible(
                    lambda c, t: self._eligible(c, t, now)):
                poll = self.BLOCKED_POLL_SECONDS  # every client of the key is held back
                wait = poll if wait is None else min(wait, poll)
                continue
            age = now - queue.oldest_enqueued()
            if (timeout <= 0 or self._closed or age >= timeout
                    or queue.rows >= self._options.max_batch_size):
                return key, 0.0
            left = timeout - age
            wait = left if wait is None else min(wait, left)
        return None, wait

    def _take(self):
        with self._cond:
            while True:
                key, wait = self._ready_key(time.monotonic())
                if key is not None:
                    break
                if self._closed and not any(self._queues.values()):
                    return None, None
                self._cond.wait(wait)
            queue = self._queues[key]
            now = time.monotonic()
            batch = queue.take_batch(self._options.max_batch_size,
                                     lambda c, t: self._eligible(c, t, now))
            if not queue:  # drop empty queues (keys include servable ids)
                del self._queues[key]
            else:  # round robin between keys
                self._queues.move_to_end(key)
            self._running[key] += 1
            return key, batch

    def _finished(self, key) -> None:
        with self._cond:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            self._cond.notify_all()  # the key may be under its thread cap again

    def _loop(self):
        while True:
            key, batch = self._take()
            if batch is None:
                return
            try:
                self._run(key, batch)
            except Exception as e:  # pylint: disable=broad-except
                # Never reached by a known path (_run answers its tasks itself); a thread that
                # died here would leave every later request of the key waiting forever.
                _LOG.exception("batch failed outside its run")
                error = e if isinstance(e, ServingError) else ServingError(
                    grpc.StatusCode.INTERNAL, f"batch failed: {type(e).__name__}: {e}")
                for task in batch:
                    if not task.future.done():
                        try:
                            task.future.set_exception(error)
                        except concurrent.futures.InvalidStateError:
                            pass
            finally:
                self._finished(key)

    def _run(self, key, batch):
        now = time.monotonic()
        live = []
        for task in batch:
            if not task.future.set_running_or_notify_cancel():
                continue
            if task.deadline is not None and task.deadline <= now:
                task.future.set_exception(ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "deadline exceeded while waiting in the batch queue"))
                continue
            late = (None if task.deadline is None
                    else self.run_times.cannot_finish(key, task.rows, task.deadline - now))
            if late is not None:
                task.future.set_exception(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, late))
                continue
            live.append(task)
        if not live:
            return
        first = live[0]
        rows = sum(t.rows for t in live)
        padded = rows
        for size in self._options.allowed_batch_sizes:
            if size >= rows:
                padded = size
                break
        deadlines = [t.deadline for t in live if t.deadline is not None]
        timeout = (max(deadlines) - now) if len(deadlines) == len(live) else None
        try:
            feeds = self._assemble(live, rows, padded)
            if self._on_batch is not None:
                self._on_batch(key, rows, padded)
            started = time.monotonic()
            outputs = first.run_fn(feeds, timeout)
            self.run_times.record(key, padded, time.monotonic() - started)
            for alias, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != padded:
                    raise ServingError(
                        grpc.StatusCode.INTERNAL,
                        f"servable output '{alias}' has shape {list(value.shape)} for a batch "
                        f"of {padded} rows; batch-major outputs must have {padded} rows")
        except Exception as e:  # every task of this batch (and only those) gets the error
            for task in live:
                _fail(task, e)
            return
        offset = 0
        for task in live:
            end = offset + task.rows
            task.future.set_result({a: v[offset:end] for a, v in outputs.items()})
            offset = end

    def _assemble(self, live, rows: int, padded: int) -> Dict[str, np.ndarray]:
        """The batch's feeds: batched inputs concatenated along dim 0 (trailing dims padded to
        the widest when pad_variable_length_inputs), padded with copies of the last row up to
        `padded` rows; the others from the first task (equal across the key)."""
        first = live[0]
        feeds = {}
        for alias, value in first.feeds.items():
            if alias not in first.batched:
                feeds[alias] = value
                continue
            parts = [t.feeds[alias] for t in live]
            shapes = {p.shape[1:] for p in parts}
            if len(shapes) > 1:
                if not self._options.pad_variable_length_inputs or len(
                        {len(s) for s in shapes}) > 1:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{alias}' has different shapes in one batch "
                        f"({sorted(list(s) for s in shapes)}); set pad_variable_length_inputs "
                        "in the batching parameters to pad them")
                parts = pad_to_common_shape(parts)
            if padded > rows:
                parts.append(np.repeat(parts[-1][-1:], padded - rows, axis=0))
            feeds[alias] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return feeds


def pad_value(dtype: np.dtype):
    """What pads a tensor of `dtype`: b"" for strings, else zero (as TF Serving)."""
    return b"" if dtype == object else np.zeros((), dtype)


def pad_to_common_shape(parts):
    """Pads arrays of equal rank (dim 0 aside) to the largest size of each trailing dim."""
    target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
    out = []
    for p in parts:
        if p.shape[1:] == target:
            out.append(p)
            continue
        grown = np.full((p.shape[0],) + target, pad_value(p.dtype), dtype=p.dtype)
        grown[(slice(None),) + tuple(slice(0, n) for n in p.shape[1:])] = p
        out.append(grown)
    return out


def _fail(task: _Task, error: Exception) -> None:
    try:
        task.future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass
