"""The model server's event loop does not serialize Predict answers: the thread that computed
an answer serializes it (grpc.aio runs a method's serializer on its one loop, where a
megabyte answer held every other call). Requests are still parsed on the loop (moving them
off saved the loop nothing measurable: docs/benchmarks.md, "Misbehaving clients").

The real gRPC services of `dpsr serve` (ModelServer) run in this process, on a loop of their
own thread, with PredictResponse.SerializeToString wrapped to record the thread it runs on;
every assertion is a count of calls per thread."""
import asyncio
import collections
import threading

import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.model_server.server import ModelServer, ServerOptions
from dpsr_tf.serving.model_server.api.server_core import CoreOptions
from dpsr_tf.demo import server_processes as process
from tests.support.serving_testing import predict_request

LARGE_ROWS = 100  # a large answer: 100 rows of 240 items
SMALL_BYTES = 4096  # answers up to this size count as small
CALLS = 6


class _Recorder:
    """Counts (what, message size, on the loop thread or not) of the wrapped protobuf calls."""

    def __init__(self, monkeypatch):
        self.loop_thread = None
        self.calls = collections.Counter()
        serialize = predict_pb2.PredictResponse.SerializeToString

        def recorded_serialize(message, *args, **kwargs):
            data = serialize(message, *args, **kwargs)
            self._note("serialize", len(data))
            return data
        monkeypatch.setattr(predict_pb2.PredictResponse, "SerializeToString",
                            recorded_serialize)

    def _note(self, what, size):
        on_loop = threading.get_ident() == self.loop_thread
        self.calls[(what, "large" if size > SMALL_BYTES else "small",
                    "loop" if on_loop else "thread")] += 1


@pytest.fixture(params=[False, True], ids=["unbatched", "batching"])
def served(request, toy_model_dir, monkeypatch):
    """(address, recorder) of an in-process ModelServer started after the wrapping."""
    recorder = _Recorder(monkeypatch)
    options = ServerOptions(port=0, enable_profiler=False, core=CoreOptions(
        batching=config_lib.BatchingOptions() if request.param else None))
    loop = asyncio.new_event_loop()
    server = ModelServer(options, config_lib.single_model_config("dpsr", toy_model_dir))
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        recorder.loop_thread = threading.get_ident()
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(300), "the in-process server did not start"
    yield f"127.0.0.1:{server.grpc_port}", recorder
    asyncio.run_coroutine_threadsafe(server.stop(grace_seconds=5), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)


def test_answers_are_serialized_off_the_loop(served):
    address, recorder = served
    stub = process.prediction_stub(address)
    large = predict_request("dpsr", [f"cordless drill {i}" for i in range(LARGE_ROWS)],
                            k=300)
    small = predict_request("dpsr", ["cordless drill"], k=10)
    for _ in range(CALLS):
        assert stub.Predict(large, timeout=60).outputs["item_ids"].tensor_shape.dim[0].size \
            == LARGE_ROWS
        stub.Predict(small, timeout=60)
    calls = dict(recorder.calls)
    # Before: grpc.aio serialized all 12 answers (6 of ~0.3 MB) on the loop.
    assert calls.get(("serialize", "large", "thread")) == CALLS, calls
    assert calls.get(("serialize", "small", "thread")) == CALLS, calls
    assert sum(n for (what, _, where), n in calls.items()
               if what == "serialize" and where == "loop") == 0, calls
