"""A Predict leaves no reference cycle behind: its answer is freed when the caller drops it,
not at the next full garbage collection.

ServerCore.predict chains two futures (the caller's and the run's) with done-callbacks that
name each other, and a concurrent.futures.Future keeps its callbacks after calling them: the
pair was a cycle holding the serialized answer. Under a 2,000-call flood the server kept 200
MiB of answers in such cycles (docs/benchmarks.md); the server freezes its start-up heap out
of the collector and an idle server allocates nothing that would trigger one. With the
collector off, the caller's future must die with its last reference (once the thread that
settled it has returned from its callback, which the wait allows for: no timing is asserted)."""
import gc
import weakref

import pytest

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.model_server.api.server_core import CoreOptions, ServerCore
from tests.support import waiting
from tests.support.serving_testing import predict_request


@pytest.fixture(params=[False, True], ids=["unbatched", "batching"])
def core(request, toy_model_dir):
    core = ServerCore(CoreOptions(
        batching=config_lib.BatchingOptions() if request.param else None))
    core.start(config_lib.single_model_config("dpsr", toy_model_dir))
    yield core
    core.stop()


@pytest.fixture
def no_collector():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("rows, k", [(1, 10), (16, 200)])
def test_an_answered_predict_is_freed_with_its_last_reference(core, no_collector, rows, k):
    request = predict_request("dpsr", [f"cordless drill {i}" for i in range(rows)], k=k)
    future = core.predict(request, 60, client="c", finish=lambda r: r.SerializeToString())
    answer = future.result(60)
    assert len(answer) > 100 * rows  # the serialized answer, rows x k items
    dead = weakref.ref(future)
    del future
    _wait_freed([dead])


def _wait_freed(refs):
    waiting.wait_until(lambda: all(r() is None for r in refs),
                       "the futures freed by reference counting alone", stall_s=30)


def test_a_refused_predict_is_freed_with_its_last_reference(core, no_collector):
    request = predict_request("dpsr", ["cordless drill"], k=10)
    request.model_spec.name = "no_such_model"
    future = core.predict(request, 60, client="c")
    assert future.exception(60) is not None
    dead = weakref.ref(future)
    del future
    assert dead() is None  # refused before any run: settled by this thread


def test_cancelled_predicts_are_freed_too(core, no_collector):
    """Callers that give up (abandon cancels the queued run; tests/serving/
    test_client_isolation.py counts those runs dropped) leave no cycle either."""
    request = predict_request("dpsr", ["cordless drill"], k=10)
    futures = [core.predict(request, 60, client="c") for _ in range(50)]
    for f in futures[10:]:
        f.cancel()
    for f in futures[:10]:
        assert f.exception(60) is None
    refs = [weakref.ref(f) for f in futures]
    del futures, f
    _wait_freed(refs)
