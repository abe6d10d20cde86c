"""The DPSR proxy (paper section 5.2.2): one PredictionService endpoint in front of many servers.

For each model (dpsr_tf/serving/proxy_config.py) it knows the shards and, per shard, the replicas that
hold it. A Predict call is sent to one replica of every shard at once (least outstanding
requests first; a replica that answers UNAVAILABLE is skipped for a back-off period and the
call fails over to the next replica of that shard), then the shard answers are merged into one
global top-K (dpsr_tf/serving/merge.py).

Deadlines: each request gets min(client deadline, model deadline_ms); shards must answer by
the shard deadline (shard_deadline_ms, at most 80% of the request's budget), so a shard that is
down or slow is left out in time to answer with the rest. Such answers carry a clear flag: the
output "partial" (DT_BOOL scalar; false when every shard answered) and trailing metadata
`dpsr-partial: true` and `dpsr-missing-shards: 1,3`. With partial_policy FAIL a missing shard
fails the request with UNAVAILABLE instead. Client errors from the shards (INVALID_ARGUMENT,
NOT_FOUND, ...) are returned as they are.
"""
import asyncio
import dataclasses
import http.server
import logging
import threading
import time
from typing import Dict, List, Optional

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import merge, proxy_config, tensors
from dpsr_tf.serving.errors import ServingError, truncate
from dpsr_tf.serving.grpc_services import (DRAINING, InFlight, add_servicer, client_timeout,
                                            serve_until_signal)
from dpsr_tf.serving.metrics import UNKNOWN, ProxyMetrics
from dpsr_tf.serving.model_server import _address, bind_grpc, freeze_heap, write_port_file

_LOG = logging.getLogger("serving.proxy")
PARTIAL_OUTPUT = "partial"
_CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                  grpc.StatusCode.UNIMPLEMENTED}
_FAILOVER_ERRORS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.ABORTED}
_MAX_BACKOFF_S = 30.0


@dataclasses.dataclass(frozen=True)
class ProxyOptions:
    """The proxy's settings (resolved from `dpsr proxy` flags).

    Attributes:
      host, port: where clients connect (port 0: any free port; see port_file).
      proxy_config_file: the ProxyConfig file, re-read every config_file_poll_wait_seconds
        when > 0.
      rest_api_port: port of the HTTP endpoint for Prometheus metrics (0: none, -1: free).
      monitoring: where metrics are served.
      ssl: TLS for the client-facing port, or None.
      port_file: JSON {"grpc_port", "rest_api_port", "pid"} written once serving.
      backend_tls: TLS to the model servers (their CA, optionally a client certificate for
        servers with client_verify), or None for plaintext.
      backend_connections: TCP connections the proxy keeps to each model server address, used
        in turn. A server of several processes sharing one port (SO_REUSEPORT) gets each
        connection to one process, so give it several per process.
    """

    host: str = "127.0.0.1"
    port: int = 8500
    proxy_config_file: str = ""
    config_file_poll_wait_seconds: float = 0.0
    rest_api_port: int = 0
    monitoring: config_lib.MonitoringOptions = config_lib.MonitoringOptions(
        prometheus_enabled=True)
    ssl: Optional[config_lib.SslOptions] = None
    port_file: str = ""
    backend_tls: Optional["BackendTls"] = None
    backend_connections: int = 1


@dataclasses.dataclass(frozen=True)
class BackendTls:
    """How the proxy speaks TLS to its model servers.

    Attributes:
      root_certificates: PEM of the CA that signed the servers' certificates (None: the
        system's roots).
      private_key, certificate_chain: PEM of the proxy's client key and certificate, for
        servers whose SSLConfig has client_verify (mutual TLS); both or neither.
      target_name: the name the servers' certificates carry, when it is not the host of the
        replica address (grpc.ssl_target_name_override); "" uses the address.
    """

    root_certificates: Optional[bytes] = None
    private_key: Optional[bytes] = None
    certificate_chain: Optional[bytes] = None
    target_name: str = ""

    def __post_init__(self):
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("a backend client certificate needs its key and the key its "
                             "certificate (give both or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key,
                                            self.certificate_chain)


class Replica:
    """A model server address and its channels (one TCP connection each, used in turn),
    shared by every route that uses it."""

    def __init__(self, address: str, tls: Optional[BackendTls] = None, connections: int = 1):
        self.address = address
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if connections > 1:  # else gRPC shares one connection between equal channels
            options.append(("grpc.use_local_subchannel_pool", 1))
        if tls is not None and tls.target_name:
            options.append(("grpc.ssl_target_name_override", tls.target_name))
        self.channels = [
            grpc.aio.insecure_channel(address, options=options) if tls is None else
            grpc.aio.secure_channel(address, tls.credentials(), options=options)
            for _ in range(max(1, connections))]
        self._stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c)
                       for c in self.channels]
        self._calls = 0
        self.outstanding = 0
        self.failures = 0
        self.down_until = 0.0
        # backend model name -> until when this replica is known to have no servable version
        # of it (it answered NOT_FOUND for the latest version): others are preferred meanwhile.
        self.missing_until: Dict[str, float] = {}

    @property
    def stub(self):
        """The stub of the next connection (round robin)."""
        self._calls += 1
        return self._stubs[self._calls % len(self._stubs)]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def mark_failed(self, base_backoff: float) -> None:
        self.failures += 1
        backoff = min(_MAX_BACKOFF_S, base_backoff * (2 ** min(self.failures - 1, 10)))
        self.down_until = time.monotonic() + backoff

    def mark_ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def mark_missing(self, model: str, backoff: float) -> None:
        self.missing_until[model] = time.monotonic() + backoff

    def ready_at(self, model: str) -> float:
        """When this replica is worth trying for `model` (<= now: at once)."""
        return max(self.down_until, self.missing_until.get(model, 0.0))


class Route:
    """A model's RouteSpec with live replicas."""

    def __init__(self, spec: proxy_config.RouteSpec, replicas: Dict[str, Replica]):
        self.spec = spec
        self.shards: List[List[Replica]] = [[replicas[a] for a in shard] for shard in spec.shards]
        self._turn = [0] * len(self.shards)
        self.mergeable: Dict[str, tuple] = {}  # signature -> (mergeable, time learned)
        self.refreshing = set()

    def pick(self, shard: int, tried) -> Optional[Replica]:
        """Least outstanding live replica not tried yet; a down one (or one without a version
        of the model) only if all are."""
        now = time.monotonic()
        model = self.spec.backend_model_name
        candidates = [r for r in self.shards[shard] if r not in tried]
        if not candidates:
            return None
        live = [r for r in candidates if r.ready_at(model) <= now]
        if not live:
            return min(candidates, key=lambda r: r.ready_at(model))
        self._turn[shard] += 1
        n = len(live)
        rotated = [live[(self._turn[shard] + i) % n] for i in range(n)]
        return min(rotated, key=lambda r: r.outstanding)


class Router:
    """Routes for every configured model; replaced as a whole on config reload."""

    def __init__(self, settings: proxy_config.ProxySettings, pool: Dict[str, Replica],
                 backend_tls: Optional[BackendTls] = None, backend_connections: int = 1):
        self.settings = settings
        for spec in settings.routes.values():
            for shard in spec.shards:
                for address in shard:
                    if address not in pool:
                        pool[address] = Replica(address, backend_tls, backend_connections)
        self.routes = {name: Route(spec, pool) for name, spec in settings.routes.items()}

    def addresses(self):
        return {a for spec in self.settings.routes.values() for shard in spec.shards
                for a in shard}


def _asks_latest(request) -> bool:
    """Whether a backend request asks for the latest version (no version or label)."""
    spec = request.tasks[0].model_spec if hasattr(request, "tasks") else request.model_spec
    return spec.WhichOneof("version_choice") is None


def _not_found(model_spec) -> ServingError:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        what = f"Specific({model_spec.name}, {model_spec.version.value})"
    elif choice == "version_label":
        what = f"Labeled({model_spec.name}, {model_spec.version_label})"
    else:
        what = f"Latest({model_spec.name})"
    return ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")


class ProxyServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService that routes, fans out and merges."""

    def __init__(self, router: Router, metrics: ProxyMetrics):
        self.router = router
        self.metrics = metrics
        self.in_flight = InFlight()

    # ------------------------------------------------------------------ backend calls

    async def _call_shard(self, route: Route, shard: int, method: str, request,
                          deadline: float):
        """Calls one replica of `shard`, failing over to the others while time is left."""
        tried = set()
        last_error = None
        name = route.spec.name
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise last_error or ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"shard {shard} of {name} did not answer within the deadline")
            replica = route.pick(shard, tried)
            if replica is None:
                raise last_error or ServingError(grpc.StatusCode.UNAVAILABLE,
                                                 f"shard {shard} of {name} has no replica")
            tried.add(replica)
            replica.outstanding += 1
            try:
                response = await getattr(replica.stub, method)(request, timeout=remaining)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                self.metrics.backend_count.labels(name, str(shard), replica.address,
                                                  code.name).inc()
                if code == grpc.StatusCode.NOT_FOUND and len(tried) < len(route.shards[shard]):
                    # A replica that is up but has no servable version (missing base path,
                    # only a broken version, a version not rolled out there yet): the others
                    # may have it. NOT_FOUND is returned only when every replica says so.
                    if _asks_latest(request):
                        replica.mark_missing(route.spec.backend_model_name,
                                             self.router.settings.backoff_s)
                    last_error = ServingError(code, e.details() or code.name)
                    continue
                if code in _CLIENT_ERRORS:
                    raise ServingError(code, e.details() or code.name) from e
                error = ServingError(code, f"shard {shard} of {name} ({replica.address}): "
                                     f"{e.details() or code.name}")
                if code in _FAILOVER_ERRORS:
                    if code == grpc.StatusCode.UNAVAILABLE:
                        replica.mark_failed(self.router.settings.backoff_s)
                    last_error = error
                    continue
                raise error from e
            finally:
                replica.outstanding -= 1
            replica.mark_ok()
            self.metrics.backend_count.labels(name, str(shard), replica.address, "OK").inc()
            return response

    def _route(self, model_spec) -> Route:
        route = self.router.routes.get(model_spec.name)
        if route is None:
            raise _not_found(model_spec)
        return route

    def _budget(self, route: Route, context) -> float:
        budget = route.spec.deadline_s
        client = client_timeout(context)
        return budget if client is None else min(budget, client)

    async def _run(self, api: str, model_name: str, context, coro):
        start = time.monotonic()
        label = model_name if model_name in self.router.routes else UNKNOWN
        code = grpc.StatusCode.OK
        if not self.in_flight.track(context):
            coro.close()  # never started: the proxy is draining
            code = DRAINING.code
            self.metrics.request_count.labels(label, api, code.name).inc()
            await context.abort(code, DRAINING.message)
        try:
            return await coro
        except ServingError as e:
            code = e.code
            await context.abort(e.code, truncate(e.message))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.request_count.labels(label, api, code.name).inc()
            self.metrics.request_latency.labels(label, api).observe(time.monotonic() - start)

    # ------------------------------------------------------------------ Predict

    async def Predict(self, request, context):
        return await self._run("predict", request.model_spec.name, context,
                               self._predict(request, context))

    async def _predict(self, request, context):
        route = self._route(request.model_spec)
        spec = route.spec
        start = time.monotonic()
        budget = self._budget(route, context)
        backend = predict_pb2.PredictRequest()
        backend.CopyFrom(request)
        backend.model_spec.name = spec.backend_model_name
        if not spec.sharded:
            response = await self._call_shard(route, 0, "Predict", backend, start + budget)
            response.model_spec.name = spec.name
            return response
        shard_budget = min(spec.shard_deadline_s or 0.8 * spec.deadline_s, 0.8 * budget)
        if not await self._is_mergeable(route, request.model_spec.signature_name,
                                        start + shard_budget):
            # e.g. query_embedding: every shard computes the same answer; ask one.
            response = await self._first_shard("Predict", route, backend, start + budget)
            response.model_spec.name = spec.name
            return response
        wanted = list(request.output_filter)
        if wanted:
            for alias in (spec.id_output, spec.score_output):
                if alias not in wanted:
                    backend.output_filter.append(alias)
        shard_deadline = start + shard_budget
        results = await asyncio.gather(
            *(self._call_shard(route, s, "Predict", backend, shard_deadline)
              for s in range(len(route.shards))), return_exceptions=True)
        answers, failed = [], []
        for s, result in enumerate(results):
            if isinstance(result, ServingError):
                if result.code in _CLIENT_ERRORS:
                    raise result
                failed.append((s, result))
            elif isinstance(result, BaseException):
                failed.append((s, ServingError(grpc.StatusCode.INTERNAL, repr(result))))
            else:
                answers.append(result)
        if not answers:
            codes = {e.code for _, e in failed}
            code = codes.pop() if len(codes) == 1 else grpc.StatusCode.UNAVAILABLE
            raise ServingError(code, f"all {len(results)} shards of {spec.name} failed: " +
                               "; ".join(e.message for _, e in failed))
        if failed and not spec.allow_partial:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"{len(failed)} of {len(results)} shards of {spec.name} failed "
                               "and partial_policy is FAIL: " +
                               "; ".join(e.message for _, e in failed))
        k = None
        if spec.k_input in request.inputs:
            k = int(tensors.to_ndarray(request.inputs[spec.k_input], spec.k_input).ravel()[0])
        merged = merge.merge_topk([merge.response_outputs(a) for a in answers], k,
                                  spec.id_output, spec.score_output)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(answers[0].model_spec)
        response.model_spec.name = spec.name
        for alias, value in merged.items():
            if not wanted or alias in wanted:
                tensors.from_ndarray(value, response.outputs[alias])
        tensors.from_ndarray(np.array(bool(failed)), response.outputs[PARTIAL_OUTPUT])
        missing = ",".join(str(s) for s, _ in failed)
        context.set_trailing_metadata((("dpsr-partial", "true" if failed else "false"),
                                       ("dpsr-missing-shards", missing)))
        if failed:
            self.metrics.partial_count.labels(spec.name).inc()
            _LOG.warning("partial answer for %s: shards %s failed: %s", spec.name, missing,
                         "; ".join(e.message for _, e in failed))
        return response

    # ------------------------------------------------------------------ other calls

    async def GetModelMetadata(self, request, context):
        return await self._run("metadata", request.model_spec.name, context,
                               self._metadata(request, context))

    async def _first_shard(self, method, route: Route, request, deadline):
        """The answer of the first shard that gives one (for calls every shard answers alike)."""
        error = None
        for s in range(len(route.shards)):
            try:
                return await self._call_shard(route, s, method, request, deadline)
            except ServingError as e:
                if e.code in _CLIENT_ERRORS:
                    raise
                error = e
        raise error

    async def _is_mergeable(self, route: Route, signature_name: str, deadline) -> bool:
        """Whether a signature answers with the merge outputs, learned from GetModelMetadata
        (cached; refreshed in the background after a minute). True when it cannot be learned,
        so that errors surface from Predict itself."""
        key = signature_name or "serving_default"
        cached = route.mergeable.get(key)
        if cached is not None:
            if time.monotonic() - cached[1] > 60 and key not in route.refreshing:
                route.refreshing.add(key)
                asyncio.ensure_future(self._learn_mergeable(
                    route, key, time.monotonic() + route.spec.deadline_s))
            return cached[0]
        return await self._learn_mergeable(route, key, deadline)

    async def _learn_mergeable(self, route: Route, key: str, deadline) -> bool:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = route.spec.backend_model_name
        try:
            response = await self._first_shard("GetModelMetadata", route, request, deadline)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
        except ServingError:
            return True
        finally:
            route.refreshing.discard(key)
        if key not in sig_map.signature_def:
            return True
        outputs = sig_map.signature_def[key].outputs
        mergeable = route.spec.id_output in outputs and route.spec.score_output in outputs
        route.mergeable[key] = (mergeable, time.monotonic())
        return mergeable

    async def _metadata(self, request, context):
        route = self._route(request.model_spec)
        backend = get_model_metadata_pb2.GetModelMetadataRequest()
        backend.CopyFrom(request)
        backend.model_spec.name = route.spec.backend_model_name
        deadline = time.monotonic() + self._budget(route, context)
        response = await self._first_shard("GetModelMetadata", route, backend, deadline)
        response.model_spec.name = route.spec.name
        if route.spec.sharded and "signature_def" in response.metadata:
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
            for sig in sig_map.signature_def.values():
                if route.spec.id_output in sig.outputs:
                    info = sig.outputs[PARTIAL_OUTPUT]
                    info.name = "dpsr_proxy/partial"
                    info.dtype = types_pb2.DT_BOOL
                    info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto())
            response.metadata["signature_def"].Pack(sig_map)
        return response

    async def _forward_unsharded(self, method, request, context):
        route = self._route(request.model_spec)
        if route.spec.sharded:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{method} is not available for the sharded model "
                               f"{route.spec.name}; use Predict")
        backend = type(request)()
        backend.CopyFrom(request)
        backend.model_spec.name = route.spec.backend_model_name
        response = await self._call_shard(route, 0, method, backend,
                                          time.monotonic() + self._budget(route, context))
        response.model_spec.name = route.spec.name
        return response

    async def Classify(self, request, context):
        return await self._run("classify", request.model_spec.name, context,
                               self._forward_unsharded("Classify", request, context))

    async def Regress(self, request, context):
        return await self._run("regress", request.model_spec.name, context,
                               self._forward_unsharded("Regress", request, context))

    async def MultiInference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        if not request.tasks:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "MultiInferenceRequest has no tasks")
        route_coro = self._multi(request, context)
        return await self._run("multi_inference", name, context, route_coro)

    async def _multi(self, request, context):
        route = self._route(request.tasks[0].model_spec)
        if route.spec.sharded:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"MultiInference is not available for the sharded model "
                               f"{route.spec.name}; use Predict")
        backend = type(request)()
        backend.CopyFrom(request)
        for task in backend.tasks:
            task.model_spec.name = route.spec.backend_model_name
        response = await self._call_shard(route, 0, "MultiInference", backend,
                                          time.monotonic() + self._budget(route, context))
        for result in response.results:
            result.model_spec.name = route.spec.name
        return response


class _MetricsHttp:
    """Serves the Prometheus text on one path (the proxy has no REST API)."""

    def __init__(self, host, port, path, metrics):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                del fmt, args

            def do_GET(self):  # noqa: N802
                if self.path.split("?", 1)[0] != path:
                    self.send_error(404)
                    return
                body = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="metrics").start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class ProxyServer:
    """A running proxy."""

    def __init__(self, options: ProxyOptions, settings: proxy_config.ProxySettings):
        self.options = options
        self.metrics = ProxyMetrics()
        self._pool: Dict[str, Replica] = {}
        self.servicer = ProxyServicer(Router(settings, self._pool, options.backend_tls,
                                             options.backend_connections),
                                      self.metrics)
        self._server = None
        self._health = None
        self._http = None
        self._poll_task = None
        self.grpc_port = None
        self.rest_api_port = None

    def apply(self, settings: proxy_config.ProxySettings) -> None:
        """Swaps in new routes; channels of servers no longer used are closed later."""
        router = Router(settings, self._pool, self.options.backend_tls,
                        self.options.backend_connections)
        old = set(self._pool) - router.addresses()
        self.servicer.router = router
        for address in old:
            replica = self._pool.pop(address)
            asyncio.get_running_loop().call_later(
                30, lambda r=replica: asyncio.ensure_future(r.close()))
        _LOG.info("proxy config applied: %s", ", ".join(
            f"{n} ({len(s.shards)} shard(s))" for n, s in settings.routes.items()))

    async def _poll_config(self):
        path = self.options.proxy_config_file
        with open(path, encoding="utf-8") as f:
            text = f.read()
        while True:
            await asyncio.sleep(self.options.config_file_poll_wait_seconds)
            try:
                with open(path, encoding="utf-8") as f:
                    new_text = f.read()
                if new_text == text:
                    continue
                text = new_text
                self.apply(proxy_config.parse_proxy_settings(text, f"--proxy_config_file {path}"))
            except (OSError, ServingError) as e:
                _LOG.error("could not apply the changed proxy config: %s", e)

    async def start(self):
        opts = self.options
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                                ("grpc.max_send_message_length", -1)])
        add_servicer(prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                     self.servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.grpc_port = bind_grpc(self._server, opts.host, opts.port, opts.ssl)
        await self._server.start()
        if opts.rest_api_port and opts.monitoring.prometheus_enabled:
            self._http = _MetricsHttp(opts.host, max(0, opts.rest_api_port),
                                      opts.monitoring.prometheus_path, self.metrics)
            self.rest_api_port = self._http.port
        if opts.proxy_config_file and opts.config_file_poll_wait_seconds > 0:
            self._poll_task = asyncio.ensure_future(self._poll_config())
        freeze_heap()
        for service in ("", "tensorflow.serving.PredictionService"):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        _LOG.info("Running DPSR proxy at %s", _address(opts.host, self.grpc_port))
        if opts.port_file:
            write_port_file(opts.port_file, grpc_port=self.grpc_port,
                            rest_api_port=self.rest_api_port or 0)

    async def stop(self, grace_seconds: float = 5.0):
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._http is not None:
            self._http.stop()
        if self._server is not None:
            await self.servicer.in_flight.stop_server(self._server, grace_seconds)
        for replica in self._pool.values():
            await replica.close()


def run_proxy(options: ProxyOptions, settings: proxy_config.ProxySettings) -> None:
    """Serves until SIGTERM/SIGINT."""
    asyncio.run(serve_until_signal(lambda: ProxyServer(options, settings), _LOG))
