"""Helpers for tests and benchmarks of the serving stack: request builders with the real
tensorflow_serving protos, output decoding, and error capture."""
import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving import tensors


def predict_request(model: str, queries, k=None, user_ids=None, version=None, label=None,
                    signature: str = "") -> "predict_pb2.PredictRequest":
    """A DPSR PredictRequest: query [B] string, optional k int32 scalar and user_id [B] int64."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    tensors.from_ndarray(np.array([q.encode() if isinstance(q, str) else q for q in queries],
                                  dtype=object), request.inputs["query"])
    if k is not None:
        tensors.from_ndarray(np.array(k, dtype=np.int32), request.inputs["k"])
    if user_ids is not None:
        tensors.from_ndarray(np.array(user_ids, dtype=np.int64), request.inputs["user_id"])
    return request


def outputs(response) -> dict:
    """alias -> np.ndarray of a PredictResponse."""
    return {alias: tensors.to_ndarray(t) for alias, t in response.outputs.items()}


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """The grpc.RpcError that fn(*args, **kwargs) raises; AssertionError if it succeeds."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")
