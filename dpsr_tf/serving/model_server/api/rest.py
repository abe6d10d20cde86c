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
server (HTTP/1.1 keep-alive), one thread per connection. Bodies come with a Content-Length or
chunked (http_body.py: size limit, server-wide budget of body bytes); each answer leaves in one
write on a TCP_NODELAY socket, so keep-alive clients do not wait on Nagle's algorithm.
"""
import base64
import http
import http.server
import json
import logging
import re
import socket
import sys
import threading
from typing import Optional

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from dpsr_tf.serving.model_server.api import http_body, json_body
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError, http_status, truncate
from dpsr_tf.serving.model_server.api.predict import RequestLimits, check_shape

_LOG = logging.getLogger("serving.rest")
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>classify|regress|predict)|/(?P<metadata>metadata))?/?$")


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # 499 and other unregistered codes
        return "Error"


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
    if not isinstance(value[0], list):  # a flat list: no per-element shapes to compare
        if any(isinstance(v, list) for v in value):
            raise _bad(f"{where}: nested lists of different lengths (ragged); every row of a "
                       "tensor needs the same shape")
        return (len(value),)
    inner = [_shape_of(v, where, depth + 1) for v in value]
    if any(s != inner[0] for s in inner):
        raise _bad(f"{where}: nested lists of different lengths (ragged); every row of a tensor "
                   "needs the same shape")
    return (len(value),) + inner[0]


def json_to_tensor(value, spec, where: str, limits: Optional[RequestLimits] = None):
    """A JSON value to a TensorProto of the signature input's dtype; with `limits`, its rows
    and values are checked against them before anything is converted."""
    shape = _shape_of(value, where)
    if limits is not None:
        check_shape(where, spec, shape, limits)
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


def build_predict_request(body: dict, signature, model_spec,
                          limits: Optional[RequestLimits] = None) -> "predict_pb2.PredictRequest":
    """PredictRequest from a TF Serving REST predict body (row or columnar format); with
    `limits`, each input's rows and values are checked before it is converted."""
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
        request.inputs[alias].CopyFrom(json_to_tensor(value, spec, f"input '{alias}'", limits))
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

# A \uD800-\uDFFF escape: the body may hold a lone surrogate (checked by walking it).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse_body(body: bytes, limits: Optional[RequestLimits] = None):
    """The JSON document of a request body; with `limits`, a predict body decoded value by
    value and refused as soon as it is over the row or value limit (json_body.py).

    Raises:
      ServingError(INVALID_ARGUMENT): empty, not UTF-8, not JSON, nested too deeply, an integer
        longer than Python converts (4300 digits), or a string with a lone UTF-16 surrogate
        escape such as "\\ud800" (not Unicode text: it could not be encoded again).
    """
    if not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        # Strict UTF-8 (json.loads(bytes) would also take UTF-16/32 and encoded surrogates).
        text = body.decode("utf-8")
        document = (json.loads(text) if limits is None else json_body.parse_predict_body(
            text, limits.max_rows, limits.max_elements))
        del text
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"JSON Parse error: Invalid value: {e}") from e
    except RecursionError as e:
        raise _bad("JSON Parse error: the request body nests JSON too deeply") from e
    except ValueError as e:  # int("<5,000 digits>"): over sys.get_int_max_str_digits()
        raise _bad(f"JSON Parse error: a number has more digits than the "
                   f"{sys.get_int_max_str_digits()} accepted; send it as a float or a "
                   "string") from e
    if _SURROGATE_ESCAPE.search(body):
        _check_unicode(document)
    return document


def _check_unicode(document) -> None:
    """INVALID_ARGUMENT if any string or key of a parsed document is not encodable as UTF-8."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _bad(f"JSON Parse error: The surrogate pair in string is invalid: "
                           f"{_show(value)} holds a lone UTF-16 surrogate escape "
                           f"(\\u{ord(value[e.start]):04x}); send valid Unicode text") from e


def _signature_name(payload) -> str:
    """The optional "signature_name" of a request object; TF Serving's message if not a
    string (json_tensor.cc FormatSignatureError)."""
    name = payload.get("signature_name", "") if isinstance(payload, dict) else ""
    if not isinstance(name, str):
        raise _bad(f"JSON Value: {_show(payload)} not formatted correctly. 'signature_name' "
                   "key must be a string value.")
    return name


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


def fill_examples(payload: dict, input_proto, max_rows: int = 0) -> None:
    """TF Serving's REST {"examples": [...], "context": {...}?} into an Input proto; more
    than `max_rows` examples (0: no limit) are refused before any is built."""
    examples = payload.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _bad("\"examples\" must be a non-empty list of JSON objects")
    if max_rows and len(examples) > max_rows:
        raise _bad(f"Input has {len(examples)} examples; the limit is {max_rows} "
                   "(--max_request_rows); split it into smaller requests")
    if "context" in payload:
        target = input_proto.example_list_with_context
        _example(payload["context"], "context", target.context)
    else:
        target = input_proto.example_list
    for i, obj in enumerate(examples):
        _example(obj, f"examples[{i}]", target.examples.add())


# ----------------------------------------------------------------------------- server

class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that went away (reset, broken pipe, stalled past the timeout) is routine:
        one debug line. Anything else is a bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            _LOG.debug("REST client %s went away: %s", client_address[0], error)
            return
        _LOG.exception("REST connection from %s failed", client_address[0])


_JSON = "application/json"


class RestGateway:
    """HTTP server thread in front of a ServerCore.

    Args:
      core: ServerCore.
      host, port: where to listen (port 0 picks a free one; see `.port`).
      timeout_seconds: predict timeout (--rest_api_timeout_in_ms); also how long a large body
        may wait for the body budget.
      metrics_path: serve Prometheus text here, or None.
      max_body_bytes: largest request body (larger: 413).
      connection_timeout_seconds: a read or write of a connection that stalls this long ends it.
      max_inflight_body_bytes: budget of body bytes held at once by all connections (bodies
        over 64 KiB wait for it; see http_body.BodyBudget); 0: as large as max_body_bytes.
    """

    def __init__(self, core, host: str, port: int, timeout_seconds: float,
                 metrics_path: Optional[str] = None, max_body_bytes: int = 16 << 20,
                 connection_timeout_seconds: float = 30.0,
                 max_inflight_body_bytes: int = 0):
        gateway = self
        self._core = core
        self._timeout = timeout_seconds
        self._metrics_path = metrics_path
        self._max_body = max_body_bytes
        self.body_budget = http_body.BodyBudget(max_inflight_body_bytes or max_body_bytes)
        self._active = 0
        self._idle = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Every read and write of a connection must progress within this many seconds, so
            # a half-sent request or an idle keep-alive connection does not hold its thread.
            timeout = connection_timeout_seconds or None

            def setup(self):
                super().setup()
                # Answers are written whole; do not hold their last segment for an ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, fmt, *args):  # quiet access log
                _LOG.debug("%s %s", self.address_string(), fmt % args)

            def do_GET(self):  # noqa: N802
                gateway._dispatch(self, "GET")

            def do_POST(self):  # noqa: N802
                gateway._dispatch(self, "POST")

        self._httpd = _HttpServer((host, port), Handler)
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
    def _send(handler, status: int, body: bytes, content_type=_JSON):
        """Writes the whole answer, head and body, in one write."""
        headers = [f"HTTP/1.1 {status} {_reason(status)}",
                   f"Server: {handler.version_string()}",
                   f"Date: {handler.date_time_string()}",
                   f"Content-Type: {content_type}",
                   f"Content-Length: {len(body)}"]
        if handler.close_connection:
            headers.append("Connection: close")
        handler.log_request(status)
        handler.wfile.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body)

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
        reader = http_body.BodyReader(handler.rfile, self._max_body, self.body_budget,
                                      self._timeout or None)
        try:
            try:
                body = reader.read(handler.headers)
            except http_body.BodyError as e:
                handler.close_connection = True  # the rest of the body is not read
                self._send(handler, e.status, json.dumps({"error": e.message}).encode())
                return
            except http_body.ClientGone as e:
                handler.close_connection = True
                _LOG.debug("REST client %s went away: %s", handler.address_string(), e)
                return
            status, payload, content_type = self._answer(handler, method, body)
            del body
            self._send(handler, status, payload, content_type)
        finally:
            reader.release()

    def _answer(self, handler, method, body):
        """(HTTP status, body bytes, content type) of a request; never raises."""
        path = handler.path.split("?", 1)[0]
        try:
            if self._metrics_path and path == self._metrics_path and method == "GET":
                return (200, self._core.metrics.exposition(),
                        "text/plain; version=0.0.4; charset=utf-8")
            match = _PATH.match(path)
            if match is None and not path.lower().startswith("/v1/"):
                # TF Serving's HTTP server hands only /v1/... to the API handler.
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {path[:200]}")
            if match is None:
                if method == "GET" and path.rstrip("/") == "/v1/models":
                    raise _bad("Missing model name in request.")
                raise _bad(f"Malformed request: {method} {path[:200]}")
            result = self._route(method, match, body)
            return 200, json.dumps(result).encode("utf-8"), _JSON
        except ServingError as e:
            error = {"error": truncate(e.message)}
            return http_status(e.code), json.dumps(error).encode("utf-8"), _JSON
        except Exception as e:  # pylint: disable=broad-except
            _LOG.exception("REST handler failed")
            error = {"error": truncate(f"{type(e).__name__}: {e}")}
            return 500, json.dumps(error).encode("utf-8"), _JSON

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
        signature_name = _signature_name(payload)
        request = (classification_pb2.ClassificationRequest() if verb == "classify"
                   else regression_pb2.RegressionRequest())
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = signature_name
        fill_examples(payload, request.input, self._core.options.limits.max_rows)
        del payload  # the parsed JSON is ~10x the body; keep only the request while it runs
        call = self._core.classify if verb == "classify" else self._core.regress
        response = call(request, self._timeout)
        if verb == "classify":
            return {"results": [[[c.label, c.score] for c in row.classes]
                                for row in response.result.classifications]}
        return {"results": [r.value for r in response.result.regressions]}

    def _predict(self, spec, body):
        payload = _parse_body(body, self._core.options.limits)
        signature_name = _signature_name(payload)
        handle = self._core.manager.acquire(spec)
        try:  # pin the version so the request runs on the signature it was built for
            servable = handle.servable
            signature = servable.signature(signature_name, "rest_predict")
            pinned = model_pb2.ModelSpec(name=spec.name)
            pinned.version.value = servable.version
        finally:
            handle.release()
        request = build_predict_request(payload, signature, pinned, self._core.options.limits)
        row_format = "instances" in payload
        del payload  # the parsed JSON is ~10x the body; keep only the request while it runs
        future = self._core.predict(request, self._timeout, "REST")
        try:
            response = future.result(timeout=self._timeout + 5 if self._timeout else None)
        except TimeoutError as e:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "request timed out (--rest_api_timeout_in_ms)") from e
        return predict_response_json(response, row_format=row_format)
