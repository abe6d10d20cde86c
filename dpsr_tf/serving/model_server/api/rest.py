"""The REST gateway: TF Serving's HTTP/JSON API over the same ServerCore.

  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict    {"instances": [...]} (row) or
                                                                 {"inputs": {...}} (columnar)
  POST /v1/models/<name>[...]:classify | :regress                 {"examples": [...],
                                                                  "context": {...}?}
  GET  <monitoring path>                                         Prometheus metrics (if enabled)

Bodies and answers are TF Serving's JSON (rest_json.py converts them: strings are UTF-8 JSON
strings or {"b64": "..."}); errors are {"error": "..."} with the HTTP status TF Serving uses for
the gRPC code. Served by the standard library's threading HTTP
server (HTTP/1.1 keep-alive), one thread per connection. Bodies come with a Content-Length or
chunked (http_body.py: size limit, server-wide budget of body bytes); each answer leaves in one
write on a TCP_NODELAY socket, so keep-alive clients do not wait on Nagle's algorithm.
"""
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
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, regression_pb2)

from dpsr_tf.serving.errors import ServingError, http_status, truncate
from dpsr_tf.serving.model_server.api import (http_body, http_head, inference, rest_json,
                                             server_core)

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
      body_pace: how fast a body must arrive (slower: 408, its budget freed); None: no
        minimum, only connection_timeout_seconds per read.
      head_seconds, max_head_bytes: a request's line and headers must arrive within this
        long of their first byte (slower: 408, the connection closed), and its header lines
        total at most this many bytes (more: 431); http_head.py.
    """

    def __init__(self, core, host: str, port: int, timeout_seconds: float,
                 metrics_path: Optional[str] = None, max_body_bytes: int = 16 << 20,
                 connection_timeout_seconds: float = 30.0,
                 max_inflight_body_bytes: int = 0,
                 body_pace: Optional[http_body.BodyPace] = http_body.BodyPace(),
                 head_seconds: float = http_head.HEAD_SECONDS,
                 max_head_bytes: int = http_head.MAX_HEAD_BYTES):
        gateway = self
        self._core = core
        self._timeout = timeout_seconds
        self._metrics_path = metrics_path
        self._max_body = max_body_bytes
        self._body_pace = body_pace
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
                self.rfile = http_head.HeadReader(self.rfile, self.connection, head_seconds,
                                                  max_head_bytes)

            def handle_one_request(self):
                self.rfile.begin()
                try:
                    super().handle_one_request()
                except http_head.HeadTooSlow as e:
                    self.close_connection = True
                    if not hasattr(self, "requestline"):  # the request line itself was late
                        self.requestline = ""
                    gateway._send(self, 408, json.dumps({"error": str(e)}).encode())
                finally:
                    self.rfile.end()

            def parse_request(self):
                try:
                    return super().parse_request()
                finally:
                    self.rfile.end()  # the body is http_body's to pace

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
                                      self._timeout or None, peer=handler.client_address[0],
                                      pace=self._body_pace, sock=handler.connection)
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
            return rest_json.model_status_json(self._core.get_model_status(
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))
        if method == "GET" and metadata:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"])
            return rest_json.model_metadata_json(self._core.get_model_metadata(request))
        if method == "POST" and verb == "predict":
            return self._predict(spec, body)
        if method == "POST" and verb in ("classify", "regress"):
            return self._classify_regress(verb, spec, body)
        raise _bad(f"Malformed request: {method} {match.group(0)[:200]}")

    def _classify_regress(self, verb, spec, body):
        handle = self._core.manager.acquire(spec)
        try:  # refuse what no signature can run before the examples are decoded
            inference.check_before_decoding(
                handle.servable, verb, rest_json.signature_name_unparsed(body),
                self._core.options.enable_signature_method_name_check)
        finally:
            handle.release()
        payload = rest_json.parse_body(body)
        if not isinstance(payload, dict):
            raise _bad("the request body must be a JSON object with \"examples\"")
        signature_name = rest_json.signature_name(payload)
        request = (classification_pb2.ClassificationRequest() if verb == "classify"
                   else regression_pb2.RegressionRequest())
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = signature_name
        rest_json.fill_examples(payload, request.input, self._core.options.limits.max_rows)
        del payload  # the parsed JSON is many times the body; keep only the request while it runs
        call = self._core.classify if verb == "classify" else self._core.regress
        response = call(request, self._timeout)
        if verb == "classify":
            return rest_json.classify_response_json(response)
        return rest_json.regress_response_json(response)

    def _predict(self, spec, body):
        payload = rest_json.parse_body(body, self._core.options.limits)
        signature_name = rest_json.signature_name(payload)
        handle = self._core.manager.acquire(spec)
        try:  # pin the version so the request runs on the signature it was built for
            servable = handle.servable
            signature = servable.signature(signature_name, "rest_predict")
            pinned = model_pb2.ModelSpec(name=spec.name)
            pinned.version.value = servable.version
        finally:
            handle.release()
        request = rest_json.build_predict_request(payload, signature, pinned,
                                                  self._core.options.limits)
        row_format = "instances" in payload
        del payload  # the parsed JSON is many times the body; keep only the request while it runs
        future = self._core.predict(request, self._timeout, "REST", finish=server_core.OUTPUTS)
        try:
            outputs = future.result(timeout=self._timeout + 5 if self._timeout else None)
        except TimeoutError as e:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "request timed out (--rest_api_timeout_in_ms)") from e
        return rest_json.predict_response_json(outputs, row_format=row_format)
