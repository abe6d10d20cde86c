"""ServingError: one error type for the serving path, with the gRPC code kept end to end.

Library code raises `ServingError(code, message)`; the gRPC layer aborts with the same code and a
truncated message (as TF Serving's grpc_status_util does); the REST layer maps the code to an HTTP
status (as TF Serving's http_rest_api_handler does). TensorFlow errors raised by a session run keep
their code: a `tf.errors.InvalidArgumentError` from an assertion inside the servable reaches the
client as INVALID_ARGUMENT.
"""
import grpc

# TF Serving truncates long error messages at the gRPC edge to this many characters.
MAX_ERROR_MESSAGE_CHARS = 1024
_TRUNCATED = "...[truncated]"

_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

_HTTP_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """An error with a gRPC status code, raised anywhere on the serving path."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


def code_from_int(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode with the numeric value (tf.errors and StatusProto use the same)."""
    return _CODE_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


def truncate(message: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """Cuts a message to `limit` characters, marking the cut."""
    if len(message) <= limit:
        return message
    return message[:limit - len(_TRUNCATED)] + _TRUNCATED


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API uses for a gRPC status code."""
    return _HTTP_BY_CODE.get(code, 500)


def from_tf_error(error) -> ServingError:
    """Converts a tf.errors.OpError into a ServingError with the same code.

    The "Graph execution error:" preamble TensorFlow adds is dropped so the client sees the
    servable's own message first (e.g. the text of a failed tf.debugging assertion).
    """
    message = getattr(error, "message", str(error)) or str(error)
    for prefix in ("Graph execution error:",):
        if message.startswith(prefix):
            message = message[len(prefix):]
    message = message.strip()
    return ServingError(code_from_int(getattr(error, "error_code", 2)), message)
