"""With batching on, a client that keeps the batch queue full cannot get another client's
requests refused: the real `dpsr serve --enable_batching` with a small queue, a flooding
client (many calls in flight on one connection) and a normal one, each on a connection of
its own. Every assertion is a count of statuses; none depends on the machine's speed."""
import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from tests.support import waiting
from tests.support.load import PredictLoad, predict_once
from tests.support.serving_testing import predict_request

FLOOD_THREADS = 24  # calls the flooding client keeps in flight
FLOOD_ROWS = 4
MAX_BATCH = 4  # rows; the queue holds QUEUED_BATCHES of them: one flood call each
QUEUED_BATCHES = 2
NORMAL_CALLS = 40


@pytest.fixture(scope="module")
def server(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch_fairness")
    (work / "batching.config").write_text(
        f"max_batch_size {{ value: {MAX_BATCH} }}\n"
        f"max_enqueued_batches {{ value: {QUEUED_BATCHES} }}\n"
        "num_batch_threads { value: 1 }\n")
    srv = process.start_model_server(
        toy_model_dir, model_name="dpsr", log_dir=str(work),
        flags=["--enable_batching", f"--batching_parameters_file={work / 'batching.config'}"])
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def _stub(address):
    """A stub on a connection of its own (the server tells clients apart by connection)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_a_client_that_keeps_the_batch_queue_full_does_not_refuse_another(server):
    # Before: the one FIFO of the key was full of the flood's calls most of the time and
    # the normal client's calls were refused UNAVAILABLE. Now a normal call pushes out the
    # flood's newest (RESOURCE_EXHAUSTED to the flood) and every normal call is answered.
    flood_request = predict_request("dpsr", [f"flood {i}" for i in range(FLOOD_ROWS)], k=10)
    normal_stub = _stub(server.address)
    normal_stub.Predict(predict_request("dpsr", ["warm"], k=10), timeout=60)
    with PredictLoad(_stub(server.address), flood_request, threads=FLOOD_THREADS,
                     timeout_s=60) as flood:
        waiting.wait_until(lambda: flood.count("UNAVAILABLE") >= 20,
                           "the flood alone fills the queue", progress=flood.__len__)
        codes = [predict_once(normal_stub, predict_request("dpsr", [f"normal {i}"], k=10),
                              60).code for i in range(NORMAL_CALLS)]
        flood_codes_during = flood.codes()
    assert codes == ["OK"] * NORMAL_CALLS
    # The flood alone met a full queue (TF Serving's UNAVAILABLE); beside the normal client
    # it was refused or pushed out as the client over its share, and still got answers.
    assert flood_codes_during["RESOURCE_EXHAUSTED"] > 0, flood_codes_during
    assert flood_codes_during["OK"] > 0
    assert set(flood_codes_during) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
