"""The model server's event loop does no protobuf work that grows with a message: a large
Predict request is parsed, and every answer serialized, in another thread. (grpc.aio runs a
method's deserializer and serializer on its one loop: a burst of large calls held every other
call behind their parsing and their answers' serialization.)

The real gRPC services of `dpsr serve` (ModelServer) run in this process, on a loop of their
own thread, with PredictRequest.FromString and PredictResponse.SerializeToString wrapped to
record the thread they run on; every assertion is a count of calls per thread."""
import asyncio
import collections
import threading

import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.model_server.grpc_services import _INLINE_MAX_BYTES
from dpsr_tf.serving.model_server.server import ModelServer, ServerOptions
from dpsr_tf.serving.model_server.server_core import CoreOptions
from dpsr_tf.demo import server_processes as process
from tests.support.serving_testing import predict_request

LARGE_ROWS = 100  # queries of a large request: ~1.5 KB, over the inline size
CALLS = 6


class _Recorder:
    """Counts (what, message size, on the loop thread or not) of the wrapped protobuf calls."""

    def __init__(self, monkeypatch):
        self.loop_thread = None
        self.calls = collections.Counter()
        parse = predict_pb2.PredictRequest.FromString
        serialize = predict_pb2.PredictResponse.SerializeToString

        def recorded_parse(data):
            self._note("parse", len(data))
            return parse(data)

        def recorded_serialize(message, *args, **kwargs):
            data = serialize(message, *args, **kwargs)
            self._note("serialize", len(data))
            return data
        monkeypatch.setattr(predict_pb2.PredictRequest, "FromString",
                            staticmethod(recorded_parse))
        monkeypatch.setattr(predict_pb2.PredictResponse, "SerializeToString",
                            recorded_serialize)

    def _note(self, what, size):
        on_loop = threading.get_ident() == self.loop_thread
        self.calls[(what, "large" if size > _INLINE_MAX_BYTES else "small",
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


def test_large_requests_are_parsed_and_answers_serialized_off_the_loop(served):
    address, recorder = served
    stub = process.prediction_stub(address)
    large = predict_request("dpsr", [f"cordless drill {i}" for i in range(LARGE_ROWS)], k=10)
    small = predict_request("dpsr", ["cordless drill"], k=10)
    assert large.ByteSize() > _INLINE_MAX_BYTES >= small.ByteSize()
    for _ in range(CALLS):
        assert stub.Predict(large, timeout=60).outputs["item_ids"].tensor_shape.dim[0].size \
            == LARGE_ROWS
        stub.Predict(small, timeout=60)
    calls = dict(recorder.calls)
    # Before: grpc.aio parsed all 12 requests and serialized all 12 answers on the loop.
    assert calls.get(("parse", "large", "thread")) == CALLS, calls
    assert calls.get(("parse", "small", "loop")) == CALLS, calls  # microseconds: inline
    assert sum(n for (what, _, where), n in calls.items()
               if what == "serialize" and where == "loop") == 0, calls
    assert sum(n for (what, _, where), n in calls.items()
               if what == "serialize" and where == "thread") == 2 * CALLS, calls
