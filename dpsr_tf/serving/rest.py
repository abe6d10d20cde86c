"""The REST gateway: TF Serving's HTTP/JSON API over the same ServerCore.

  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict    {"instances": [...]} (row) or
                                                                 {"inputs": {...}} (columnar)
  POST /v1/models/<name>[...]:classify | :regress                 {"examples": [...],
                                                                  "context": {...}?}
  GET  <monitoring path>                                         Prometheus metrics (if enabled)

Strings are UTF-8 JSON strings or {"b64": "..."}; errors are {"error": "..."} with the HTTP
status TF Serving uses for the gRPC code. Served by the standard library's threading HTTP
server (HTTP/1.1 keep-alive), one thread per connection.
"""
import base64
import http.server
import json
import logging
import re
import threading
from typing import Optional

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError, http_status, truncate

_LOG = logging.getLogger("serving.rest")
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>classify|regress|predict)|/(?P<metadata>metadata))?/?$")


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


_INT64_MAX = (1 << 63) - 1
# Deepest JSON nesting of a tensor value (numpy allows 32 dimensions).
_MAX_DEPTH = 32


def _model_spec(match) -> "model_pb2.ModelSpec":
    spec = model_pb2.ModelSpec(name=match.group("name"))
    if match.group("version") is not None:
        version = int(match.group("version"))
        if not 0 <= version <= _INT64_MAX:
            raise _bad(f"Failed to convert version: {match.group('version')} (versions are 0 "
                       f"to {_INT64_MAX})")
        spec.version.value = version
    elif match.group("label") is not None:
        spec.version_label = match.group("label")
    return spec


# ----------------------------------------------------------------------------- JSON -> tensors

def _leaf_to_bytes(value, where):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise _bad(f"{where}: invalid base64 in {{\"b64\": ...}}: {e}") from e
    raise _bad(f"{where}: expected a string or {{\"b64\": \"...\"}}, got {json.dumps(value)[:80]}")


def _shape_of(value, where, depth=0):
    """Shape of a nested JSON list; INVALID_ARGUMENT when ragged or nested too deeply."""
    if not isinstance(value, list):
        return ()
    if depth >= _MAX_DEPTH:
        raise _bad(f"{where}: lists nested more than {_MAX_DEPTH} deep; a tensor has at most "
                   f"{_MAX_DEPTH} dimensions")
    if not value:
        return (0,)
    inner = [_shape_of(v, where, depth + 1) for v in value]
    if any(s != inner[0] for s in inner):
        raise _bad(f"{where}: nested lists of different lengths (ragged); every row of a tensor "
                   "needs the same shape")
    return (len(value),) + inner[0]


def json_to_tensor(value, spec, where: str):
    """A JSON value to a TensorProto of the signature input's dtype."""
    shape = _shape_of(value, where)
    if spec.dtype == types_pb2.DT_STRING:
        flat = np.array(value, dtype=object).ravel() if shape else [value]
        array = np.empty(len(flat), dtype=object)
        array[:] = [_leaf_to_bytes(v, where) for v in flat]
        array = array.reshape(shape)
    else:
        np_dtype = tensors.numpy_dtype(spec.dtype)
        if np_dtype is None:
            raise _bad(f"{where}: dtype {tensors.dtype_name(spec.dtype)} is not supported over REST")
        name = tensors.dtype_name(spec.dtype)
        leaves = np.array(value, dtype=object).ravel() if shape else [value]
        if np_dtype == np.bool_:
            if not all(isinstance(v, bool) for v in leaves):
                raise _bad(f"{where}: {name} needs true or false, got {_show(value)}")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves):
            # JSON true is not the number 1, nor "5" the number 5.
            raise _bad(f"{where}: value is not of expected type: "
                       f"{name.lower().removeprefix('dt_')} (expected numbers for {name}, got "
                       f"{_show(value)})")
        if np.issubdtype(np_dtype, np.integer):
            info = np.iinfo(np_dtype)
            for v in leaves:
                if isinstance(v, float) and (not np.isfinite(v) or v != np.floor(v)):
                    raise _bad(f"{where}: {name} needs integers, got {_show(v)}")
                if not info.min <= v <= info.max:
                    raise _bad(f"{where}: {_show(v)} is out of the range of {name} "
                               f"[{info.min}, {info.max}]")
            array = np.array([int(v) for v in leaves], dtype=np_dtype).reshape(shape)
        else:
            try:
                array = np.array(value, dtype=np_dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise _bad(f"{where}: expected numbers for {name}, got {_show(value)}") from e
    proto = tensors.from_ndarray(array)
    proto.dtype = spec.dtype
    return proto


def _show(value) -> str:
    """A JSON value for a message, cut to 80 characters."""
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:80]


def build_predict_request(body: dict, signature, model_spec) -> "predict_pb2.PredictRequest":
    """PredictRequest from a TF Serving REST predict body (row or columnar format)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object with \"instances\" or \"inputs\"")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise _bad("the request body must have exactly one of \"instances\" (row format) or "
                   "\"inputs\" (columnar format)")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(model_spec)
    request.model_spec.signature_name = signature.name
    required = [a for a, s in signature.inputs.items() if s.default is None]
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _bad("\"instances\" must be a non-empty list")
        if all(isinstance(i, dict) and not set(i) == {"b64"} for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise _bad("every instance must have the same named inputs")
            columns = {k: [i[k] for i in instances] for k in keys}
        else:
            if len(required) != 1:
                raise _bad(f"instances without names need a signature with exactly one "
                           f"required input; this one has {sorted(required)}: use objects")
            columns = {required[0]: instances}
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not set(inputs) == {"b64"}:
            columns = inputs
        else:
            if len(required) != 1:
                raise _bad(f"unnamed \"inputs\" need a signature with exactly one required "
                           f"input; this one has {sorted(required)}: use an object")
            columns = {required[0]: inputs}
    for alias, value in columns.items():
        spec = signature.inputs.get(alias)
        if spec is None:
            raise _bad(f"input '{alias}' is not in signature '{signature.name}'; inputs are "
                       f"{sorted(signature.inputs)}")
        request.inputs[alias].CopyFrom(json_to_tensor(value, spec, f"input '{alias}'"))
    return request


# ----------------------------------------------------------------------------- tensors -> JSON

def _jsonable(array: np.ndarray):
    if array.dtype == object:
        def conv(v):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(v).decode("ascii")}
        return np.vectorize(conv, otypes=[object])(array).tolist() if array.size else \
            array.tolist()
    return array.tolist()


def predict_response_json(response, row_format: bool) -> dict:
    outputs = {alias: tensors.to_ndarray(t, alias) for alias, t in response.outputs.items()}
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {a: _jsonable(v) for a, v in outputs.items()}}
    rows = {v.shape[0] if v.ndim else -1 for v in outputs.values()}
    if len(rows) != 1 or -1 in rows:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "outputs do not share a batch dimension; use the columnar format "
                           "(\"inputs\") for this signature")
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    columns = {a: _jsonable(v) for a, v in outputs.items()}
    n = rows.pop()
    return {"predictions": [{a: columns[a][i] for a in columns} for i in range(n)]}


# ----------------------------------------------------------------------------- classify/regress

def _parse_body(body: bytes):
    if not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"JSON Parse error: Invalid value: {e}") from e
    except RecursionError as e:
        raise _bad("JSON Parse error: the request body nests JSON too deeply") from e


def _feature(value, where, feature) -> None:
    """A JSON feature value (number, string, {"b64"}, or a list of one kind) into a tf Feature:
    integers -> int64_list, other numbers -> float_list, strings -> bytes_list (TF Serving's
    REST classify/regress format)."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) for v in values) and values:
        raise _bad(f"{where}: true/false is not a feature value; send numbers or strings")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        for v in values:
            if not -(1 << 63) <= v <= _INT64_MAX:
                raise _bad(f"{where}: {v} is out of the int64 range")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    elif all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(_leaf_to_bytes(v, where) for v in values)
    else:
        raise _bad(f"{where}: a feature is a number, a string or a list of one kind; got "
                   f"{_show(value)}")


def _example(obj, where, example) -> None:
    if not isinstance(obj, dict):
        raise _bad(f"{where}: an example is a JSON object of features, got {_show(obj)}")
    for name, value in obj.items():
        _feature(value, f"{where} feature '{name}'", example.features.feature[name])


def fill_examples(payload: dict, input_proto) -> None:
    """TF Serving's REST {"examples": [...], "context": {...}?} into an Input proto."""
    examples = payload.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _bad("\"examples\" must be a non-empty list of JSON objects")
    if "context" in payload:
        target = input_proto.example_list_with_context
        _example(payload["context"], "context", target.context)
    else:
        target = input_proto.example_list
    for i, obj in enumerate(examples):
        _example(obj, f"examples[{i}]", target.examples.add())


# ----------------------------------------------------------------------------- server

class RestGateway:
    """HTTP server thread in front of a ServerCore.

    Args:
      core: ServerCore.
      host, port: where to listen (port 0 picks a free one; see `.port`).
      timeout_seconds: predict timeout (--rest_api_timeout_in_ms).
      metrics_path: serve Prometheus text here, or None.
    """

    def __init__(self, core, host: str, port: int, timeout_seconds: float,
                 metrics_path: Optional[str] = None, max_body_bytes: int = 16 << 20,
                 connection_timeout_seconds: float = 30.0):
        gateway = self
        self._core = core
        self._timeout = timeout_seconds
        self._metrics_path = metrics_path
        self._max_body = max_body_bytes
        self._active = 0
        self._idle = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Every read and write of a connection must progress within this many seconds, so
            # a half-sent request or an idle keep-alive connection does not hold its thread.
            timeout = connection_timeout_seconds or None

            def log_message(self, fmt, *args):  # quiet access log
                _LOG.debug("%s %s", self.address_string(), fmt % args)

            def do_GET(self):  # noqa: N802
                gateway._dispatch(self, "GET")

            def do_POST(self):  # noqa: N802
                gateway._dispatch(self, "POST")

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest",
                                        daemon=True)

    def start(self):
        self._thread.start()

    def stop(self, grace_seconds: float = 10.0):
        """Stops accepting connections, then waits up to `grace_seconds` for requests that are
        running to be answered."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, grace_seconds)

    # ------------------------------------------------------------------ handling

    @staticmethod
    def _send(handler, status: int, body: bytes, content_type="application/json"):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _send_json(self, handler, status, obj):
        self._send(handler, status, json.dumps(obj).encode("utf-8"))

    def _dispatch(self, handler, method):
        with self._idle:
            self._active += 1
        try:
            self._handle(handler, method)
        finally:
            with self._idle:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    def _handle(self, handler, method):
        path = handler.path.split("?", 1)[0]
        body = b""
        length = handler.headers.get("Content-Length") or "0"
        if not length.isascii() or not length.isdigit():
            handler.close_connection = True
            self._send_json(handler, 400, {"error": f"Content-Length {length[:40]!r} is not a "
                                                    "number of bytes"})
            return
        length = int(length)
        if length > self._max_body:
            handler.close_connection = True  # the body is not read
            self._send_json(handler, 413, {"error": f"the request body is {length:,} bytes; "
                                                    f"the limit is {self._max_body:,} "
                                                    "(--rest_api_max_body_bytes)"})
            return
        if length:
            try:
                body = handler.rfile.read(length)
            except OSError:  # a timeout or reset mid-body: drop the connection
                body = b""
            if len(body) != length:  # the client went away or stalled mid-body
                handler.close_connection = True
                return
        try:
            if self._metrics_path and path == self._metrics_path and method == "GET":
                self._send(handler, 200, self._core.metrics.exposition(),
                           "text/plain; version=0.0.4; charset=utf-8")
                return
            match = _PATH.match(path)
            if match is None and not path.lower().startswith("/v1/"):
                # TF Serving's HTTP server hands only /v1/... to the API handler.
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {path[:200]}")
            if match is None:
                if method == "GET" and path.rstrip("/") == "/v1/models":
                    raise _bad("Missing model name in request.")
                raise _bad(f"Malformed request: {method} {path[:200]}")
            result = self._route(method, match, body)
            self._send_json(handler, 200, result)
        except ServingError as e:
            self._send_json(handler, http_status(e.code), {"error": truncate(e.message)})
        except Exception as e:  # pylint: disable=broad-except
            _LOG.exception("REST handler failed")
            self._send_json(handler, 500, {"error": truncate(f"{type(e).__name__}: {e}")})

    def _route(self, method, match, body):
        spec = _model_spec(match)
        verb, metadata = match.group("verb"), match.group("metadata")
        if method == "GET" and verb is None and metadata is None:
            response = self._core.get_model_status(
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
            return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                             including_default_value_fields=True)
        if method == "GET" and metadata:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"])
            response = self._core.get_model_metadata(request)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
            return {
                # As TF Serving prints it: every field, default values included.
                "model_spec": json_format.MessageToDict(response.model_spec,
                                                        preserving_proto_field_name=True,
                                                        including_default_value_fields=True),
                "metadata": {"signature_def": json_format.MessageToDict(
                    sig_map, preserving_proto_field_name=True,
                    including_default_value_fields=True)},
            }
        if method == "POST" and verb == "predict":
            return self._predict(spec, body)
        if method == "POST" and verb in ("classify", "regress"):
            return self._classify_regress(verb, spec, body)
        raise _bad(f"Malformed request: {method} {match.group(0)[:200]}")

    def _classify_regress(self, verb, spec, body):
        payload = _parse_body(body)
        if not isinstance(payload, dict):
            raise _bad("the request body must be a JSON object with \"examples\"")
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise _bad(f"\"signature_name\" must be a string, got {_show(signature_name)}")
        request = (classification_pb2.ClassificationRequest() if verb == "classify"
                   else regression_pb2.RegressionRequest())
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = signature_name
        fill_examples(payload, request.input)
        call = self._core.classify if verb == "classify" else self._core.regress
        response = call(request, self._timeout)
        if verb == "classify":
            return {"results": [[[c.label, c.score] for c in row.classes]
                                for row in response.result.classifications]}
        return {"results": [r.value for r in response.result.regressions]}

    def _predict(self, spec, body):
        payload = _parse_body(body)
        signature_name = payload.get("signature_name", "") if isinstance(payload, dict) else ""
        if not isinstance(signature_name, str):
            raise _bad(f"\"signature_name\" must be a string, got {_show(signature_name)}")
        handle = self._core.manager.acquire(spec)
        try:  # pin the version so the request runs on the signature it was built for
            servable = handle.servable
            signature = servable.signature(signature_name)
            pinned = model_pb2.ModelSpec(name=spec.name)
            pinned.version.value = servable.version
        finally:
            handle.release()
        request = build_predict_request(payload, signature, pinned)
        future = self._core.predict(request, self._timeout, "REST")
        try:
            response = future.result(timeout=self._timeout + 5 if self._timeout else None)
        except TimeoutError as e:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "request timed out (--rest_api_timeout_in_ms)") from e
        return predict_response_json(response, row_format="instances" in payload)
