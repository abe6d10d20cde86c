"""grpc_calls.outcome: how a handler waits for a run's concurrent future on the event loop.
Counts the loop's wake-ups: a future already done (most of a flood's calls, refused before
any run) is read without one; one settled later by another thread costs exactly one."""
import asyncio
import concurrent.futures
import threading

import grpc
import pytest

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.grpc_calls import outcome


def _run(coro_fn):
    """Runs coro_fn() on a fresh loop whose call_soon_threadsafe is counted; returns
    (its result, the count)."""
    loop = asyncio.new_event_loop()
    calls = []
    original = loop.call_soon_threadsafe

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    loop.call_soon_threadsafe = counted
    try:
        return loop.run_until_complete(coro_fn()), len(calls)
    finally:
        loop.close()


def _done(result=None, exception=None, cancelled=False):
    f = concurrent.futures.Future()
    if cancelled:
        f.cancel()
    elif exception is not None:
        f.set_exception(exception)
    else:
        f.set_result(result)
    return f


@pytest.mark.parametrize("future, want", [
    (_done(result=b"answer"), (b"answer", None)),
    (_done(exception=ServingError(grpc.StatusCode.UNAVAILABLE, "full")),
     (None, (grpc.StatusCode.UNAVAILABLE, "full"))),
    (_done(cancelled=True), (None, (grpc.StatusCode.CANCELLED, "request cancelled"))),
    (_done(exception=KeyError("x")), (None, (grpc.StatusCode.INTERNAL, "KeyError: 'x'"))),
])
def test_a_settled_future_is_read_without_a_wake_up(future, want):
    (result, error), wake_ups = _run(lambda: outcome(future))
    assert wake_ups == 0
    assert (result, None if error is None else (error.code, error.message)) == want


def test_a_future_settled_by_another_thread_wakes_the_loop_once():
    future = concurrent.futures.Future()

    async def wait():
        threading.Timer(0.01, future.set_result, (b"later",)).start()
        return await outcome(future)
    (result, error), wake_ups = _run(wait)
    assert (result, error, wake_ups) == (b"later", None, 1)


def test_cancelling_the_wait_cancels_the_future():
    future = concurrent.futures.Future()

    async def wait():
        task = asyncio.ensure_future(outcome(future))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    _run(wait)
    assert future.cancelled()
