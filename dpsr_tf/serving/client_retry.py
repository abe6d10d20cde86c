"""The gRPC channel options a client of `dpsr serve` or `dpsr proxy` sets to retry UNAVAILABLE.

A call the server could not answer because its connection ended under it (the native front
end was killed or crashed and the server restarted it; docs/serving.md, "Lifetime"), or
because the server was stopping, fails UNAVAILABLE. The PredictionService methods (Predict,
Classify, Regress, MultiInference, GetModelMetadata) and GetModelStatus change nothing on the
server, so sending them again is safe; gRPC does it itself when the channel's service config
holds a retry policy (gRFC A6). The retry waits for a fresh connection: the server keeps its
port open while the front end restarts, so the retried call is answered by the new process.

Only UNAVAILABLE is retried: RESOURCE_EXHAUSTED (this client over its share) and
DEADLINE_EXCEEDED would only add load where it is already too much.
"""
import json
from typing import List, Tuple

# The read-only methods (tensorflow_serving/apis/*_service.proto): all of PredictionService's,
# and ModelService's status (not HandleReloadConfigRequest, which changes what is served).
RETRIED_METHODS = ({"service": "tensorflow.serving.PredictionService"},
                   {"service": "tensorflow.serving.ModelService", "method": "GetModelStatus"})
# gRPC caps maxAttempts at 5; 3 rides out a front end restart (0.1 s backoff, then its start).
DEFAULT_MAX_ATTEMPTS = 3


def retry_service_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                         initial_backoff_s: float = 0.1, max_backoff_s: float = 1.0) -> str:
    """The service config (JSON) retrying UNAVAILABLE on the serving API's read-only methods."""
    if not 2 <= max_attempts <= 5:
        raise ValueError(f"max_attempts must be in [2, 5] (gRPC caps it at 5), got {max_attempts}")
    if not 0 < initial_backoff_s <= max_backoff_s:
        raise ValueError(f"need 0 < initial_backoff_s <= max_backoff_s, got {initial_backoff_s} "
                         f"and {max_backoff_s}")
    return json.dumps({"methodConfig": [{
        "name": [dict(m) for m in RETRIED_METHODS],
        "retryPolicy": {
            "maxAttempts": max_attempts,
            "initialBackoff": f"{initial_backoff_s}s",
            "maxBackoff": f"{max_backoff_s}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]})


def retry_channel_options(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> List[Tuple[str, object]]:
    """Options for grpc.insecure_channel / secure_channel (and grpc.aio's): retries on, with
    the policy above."""
    return [("grpc.enable_retries", 1),
            ("grpc.service_config", retry_service_config(max_attempts))]
