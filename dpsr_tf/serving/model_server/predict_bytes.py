"""Predict's messages as bytes, parsed and serialized off the event loop where they are large.

grpc.aio runs a method's request deserializer and response serializer on its one event loop,
so every Predict call's protobuf work there delays every other call: a 64-row k=300 answer
is about 0.6 MB to serialize, and 2,000 of them cost the loop seconds. The model server
registers Predict raw (grpc_calls.add_servicer `raw_methods`): its handler gets the request's
bytes, parses a small one on the loop (microseconds) and a large one in a decode thread, and
every answer is serialized by the thread that computed it (ServerCore.predict's `finish`).
"""
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving.grpc_calls import parse_request


def parse(data: bytes) -> "predict_pb2.PredictRequest":
    """The PredictRequest in `data`.

    Raises:
      ServingError(INVALID_ARGUMENT): the bytes do not parse (the message the server gave
        when grpc.aio parsed them: grpc_calls.malformed_request).
    """
    return parse_request(predict_pb2.PredictRequest.FromString, data, "Predict")


def serialize(response: "predict_pb2.PredictResponse") -> bytes:
    """The bytes gRPC sends for `response`."""
    return response.SerializeToString()
