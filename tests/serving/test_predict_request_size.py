"""Where a Predict is validated is decided by the size of the bytes it came as
(PredictionServicer.start_predict): the gRPC server's parser keeps that size (SizedPredict) and
the framed hop passes its payload's length, so a large request is never encoded again on the
event loop to learn it (protobuf's ByteSize encodes the whole message: 2-7 ms for 4 MiB). The
answer is the same either way."""
import os

import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.grpc_calls import InFlight
from dpsr_tf.serving.model_server.api import grpc_services
from dpsr_tf.serving.model_server.api.grpc_services import PredictionServicer, SizedPredict
from dpsr_tf.serving.model_server.api.server_core import CoreOptions, ServerCore
from tests.support import toy_servable as ts
from tests.support.serving_testing import outputs, predict_request


@pytest.fixture(scope="module")
def servicer(tmp_path_factory):
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    model_dir = str(tmp_path_factory.mktemp("servable") / "dpsr")
    ts.write_toy_servable(os.path.join(model_dir, "1"), ids, emb, spec)
    core = ServerCore(CoreOptions())
    core.start(config_lib.single_model_config("dpsr", model_dir))
    servicer = PredictionServicer(core, InFlight())
    try:
        yield servicer
    finally:
        servicer.decode.close()
        core.stop()


def _answer(future, decoding):
    run = future.result(60) if decoding else future
    return outputs(predict_pb2.PredictResponse.FromString(run.result(60)))


def test_the_size_given_decides_where_it_is_validated(servicer):
    request = predict_request("dpsr", ["cordless drill"], k=5)
    small = request.ByteSize()
    assert small <= grpc_services._INLINE_MAX_BYTES
    inline = servicer.start_predict(request, None, "c")                  # size computed
    told_small = servicer.start_predict(request, None, "c", small)
    told_large = servicer.start_predict(request, None, "c",
                                        grpc_services._INLINE_MAX_BYTES + 1)
    assert (inline[1], told_small[1], told_large[1]) == (False, False, True)
    expected = _answer(*inline)
    for got in (_answer(*told_small), _answer(*told_large)):
        np.testing.assert_array_equal(got["item_ids"], expected["item_ids"])
        np.testing.assert_array_equal(got["scores"], expected["scores"])


def test_the_grpc_parser_keeps_the_size_of_the_bytes():
    data = predict_request("dpsr", ["x" * 100_000], k=5).SerializeToString()
    parsed = SizedPredict.parse(data)
    assert parsed.size == len(data) and parsed.message.SerializeToString() == data
