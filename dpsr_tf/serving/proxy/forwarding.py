"""The Predict request the proxy sends to a model's shards, made from the bytes its client sent.

A copy of the parsed request with the backend's model name, serialized again, costs a large
request a copy, an encoding and fresh buffers for both: 8-9 ms of the event loop for 4 MiB,
most of it page faults; the client's bytes with the changed fields appended cost one copy,
1.7-2.0 ms (bench/large_buffer_bench.py). Protocol buffers merge a singular message field that
appears twice and let the last value of a scalar win, so an appended ModelSpec holding only the
name replaces the client's name and keeps its version, label and signature; appended
output_filter entries join the client's. The shards parse the same bytes as the proxy did, so
both read the same request.
"""
import dataclasses
from typing import Iterable, Optional, Union

from tensorflow_serving.apis import predict_pb2


@dataclasses.dataclass(frozen=True)
class ReceivedPredict:
    """A client's Predict request, parsed, with the bytes it came as (bytes or a memoryview;
    None when it was made in this process)."""

    message: predict_pb2.PredictRequest
    data: Optional[Union[bytes, memoryview]] = None

    @classmethod
    def parse(cls, data: Union[bytes, memoryview]) -> "ReceivedPredict":
        """Parses `data` (raises DecodeError as PredictRequest.FromString)."""
        return cls(predict_pb2.PredictRequest.FromString(data), data)


def request_bytes(request) -> bytes:
    """A request message's bytes, or the bytes given (a payload of backend_payload)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


def backend_payload(received: ReceivedPredict, backend_model_name: str,
                    output_filter: Iterable[str] = ()) -> bytes:
    """The serialized request for the shards: the client's with model_spec.name set to
    `backend_model_name` and `output_filter` added to its filter."""
    changes = predict_pb2.PredictRequest(output_filter=list(output_filter))
    changes.model_spec.name = backend_model_name
    if received.data is not None:
        return b"".join((received.data, changes.SerializeToString()))
    request = predict_pb2.PredictRequest()
    request.CopyFrom(received.message)
    request.MergeFrom(changes)
    return request.SerializeToString()
