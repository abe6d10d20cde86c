"""The DPSR proxy's process (paper section 5.2.2): one endpoint in front of many model servers.

ProxyServer serves the proxy's PredictionService (dpsr_tf/serving/proxy/servicer.py: routing,
fan-out to the index shards, merge) on its port, or behind the native front end, with gRPC
health, Prometheus metrics, a proxy config re-read while it runs, and draining on SIGTERM.
"""
import asyncio
import dataclasses
import logging
from typing import Dict, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import heap_trim, stream_limits
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.front_end import (FrontEndOptions, NativeFrontEnd,
                                       exit_if_front_end_failed, stop_this_process)
from dpsr_tf.serving.grpc_calls import add_servicer, serve_until_signal
from dpsr_tf.serving.metrics import ProxyMetrics
from dpsr_tf.serving.metrics_http import MetricsHttpServer
from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.proxy.forwarding import ReceivedPredict
from dpsr_tf.serving.proxy.framed_calls import FramedProxyCalls
from dpsr_tf.serving.proxy.peer_limits import DEFAULT_MAX_BACKEND_CALLS, DEFAULT_MAX_CALLS_PER_PEER
from dpsr_tf.serving.proxy.request_checks import ProxyRequestLimits
from dpsr_tf.serving.proxy.routing import BackendTls, Replica, Router
from dpsr_tf.serving.proxy.servicer import ProxyServicer
from dpsr_tf.serving.startup import (COMPRESSION_ARGUMENT, ONLY_UNCOMPRESSED, bind_grpc,
                                     freeze_heap, grpc_address, raise_fd_limit,
                                     start_heap_trimmer, write_port_file)

_LOG = logging.getLogger("serving.proxy")
_MAX_REQUEST_BYTES = 64 << 20


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
      max_concurrent_calls_per_peer: calls one client connection may have in flight; more are
        answered RESOURCE_EXHAUSTED (dpsr_tf/serving/proxy/peer_limits.py). 0: no limit.
      max_backend_calls_in_flight: client calls doing backend work at once; more wait in the
        proxy, the peer with the fewest such calls served first (peer_limits.py). 0: no limit.
      max_backend_calls_per_peer: of those, the most one client connection holds, so that
        another's call finds a slot free (0: half of max_backend_calls_in_flight).
      max_streams_per_connection: calls one client connection may have open at once; its
        gRPC library holds the rest (stream_limits.py). 0: no limit.
      input_limits: the model servers' input limits, which the proxy checks before it sends a
        Predict request to the shards (proxy/request_checks.py).
      native_front_end: FrontEndOptions to put the C++ front end (serving/front_end.py) on the
        port, the proxy behind it on a private UNIX socket (with `framed_predict`, Predict on a
        second one as frames: proxy/framed_calls.py); None: the proxy's own gRPC server.
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
    backend_tls: Optional[BackendTls] = None
    backend_connections: int = 1
    max_concurrent_calls_per_peer: int = DEFAULT_MAX_CALLS_PER_PEER
    max_backend_calls_in_flight: int = DEFAULT_MAX_BACKEND_CALLS
    max_backend_calls_per_peer: int = 0
    max_streams_per_connection: int = stream_limits.DEFAULT_MAX_STREAMS_PER_CONNECTION
    heap_trim_interval_seconds: float = heap_trim.DEFAULT_INTERVAL_SECONDS
    input_limits: ProxyRequestLimits = ProxyRequestLimits()
    native_front_end: Optional[FrontEndOptions] = None


class ProxyServer:
    """A running proxy."""

    def __init__(self, options: ProxyOptions, settings: proxy_config.ProxySettings):
        self.options = options
        self.metrics = ProxyMetrics()
        self._pool: Dict[str, Replica] = {}
        self.servicer = ProxyServicer(self._router(settings), self.metrics,
                                      options.max_concurrent_calls_per_peer,
                                      options.max_backend_calls_in_flight,
                                      options.max_backend_calls_per_peer,
                                      options.native_front_end is not None,
                                      options.input_limits)
        self._front_end = None
        self._framed = None
        self._server = None
        self._health = None
        self._http = None
        self._poll_task = None
        self._heap_trimmer = None
        self.grpc_port = None
        self.rest_api_port = None

    def _router(self, settings: proxy_config.ProxySettings) -> Router:
        return Router(settings, self._pool, self.options.backend_tls,
                      self.options.backend_connections, self.metrics.replica_ejected_changed)

    def apply(self, settings: proxy_config.ProxySettings) -> None:
        """Swaps in new routes; channels of servers no longer used are closed later."""
        router = self._router(settings)
        old = set(self._pool) - router.addresses()
        self.servicer.router = router
        for address in old:
            replica = self._pool.pop(address)
            asyncio.get_running_loop().call_later(
                30, lambda r=replica: asyncio.ensure_future(r.close()))
        _LOG.info("proxy config applied: %s%s", ", ".join(
            f"{n} ({len(s.shards)} shard(s))" for n, s in settings.routes.items()),
            "".join(f"; local replica {a}: Predict as frames at {path}"
                    for a, path in sorted(settings.framed_sockets.items())))

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
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", _MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", -1),
            (COMPRESSION_ARGUMENT, ONLY_UNCOMPRESSED),  # refused unread, not inflated
            *stream_limits.server_arguments(opts.max_streams_per_connection)])
        add_servicer(prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                     self.servicer, self._server,
                     request_parsers={"Predict": ReceivedPredict.parse})
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if opts.native_front_end is not None:  # the port is the front end's; we sit behind it
            self._front_end = NativeFrontEnd(grpc_address(opts.host, opts.port),
                                             opts.native_front_end,
                                             opts.max_streams_per_connection,
                                             _MAX_REQUEST_BYTES,
                                             on_exit=stop_this_process)
            self._front_end.bind_behind(self._server)
            if self._front_end.framed_socket:  # Predict comes as frames, other calls over gRPC
                self._framed = FramedProxyCalls(self.servicer, self._front_end.framed_socket,
                                                _MAX_REQUEST_BYTES)
                await self._framed.start()
        else:
            self.grpc_port = bind_grpc(self._server, opts.host, opts.port, opts.ssl)
        await self._server.start()
        if self._front_end is not None:  # from the loop's thread, which lives as long as we do
            self.grpc_port = self._front_end.start()
        if opts.rest_api_port and opts.monitoring.prometheus_enabled:
            self._http = MetricsHttpServer(opts.host, max(0, opts.rest_api_port),
                                           opts.monitoring.prometheus_path, self.metrics.registry)
            self.rest_api_port = self._http.port
        if opts.proxy_config_file and opts.config_file_poll_wait_seconds > 0:
            self._poll_task = asyncio.ensure_future(self._poll_config())
        freeze_heap()
        self._heap_trimmer = start_heap_trimmer(opts.heap_trim_interval_seconds)
        for service in ("", "tensorflow.serving.PredictionService"):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        _LOG.info("Running DPSR proxy at %s", grpc_address(opts.host, self.grpc_port))
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
        if self._front_end is not None:  # first: it drains the calls it holds into us
            await self._front_end.drain(grace_seconds)
        if self._server is not None:
            await self.servicer.in_flight.stop_server(self._server, grace_seconds)
        if self._framed is not None:  # the front end is gone: nothing more comes this way
            _LOG.info("framed Predict calls read: %d", self._framed.calls)
            await self._framed.stop()
        for replica in self._pool.values():
            await replica.close()
        self.servicer.close()
        if self._heap_trimmer is not None:
            self._heap_trimmer.stop()
            _LOG.info("%s", self._heap_trimmer.summary())


def run_proxy(options: ProxyOptions, settings: proxy_config.ProxySettings) -> None:
    """Serves until SIGTERM/SIGINT (SystemExit, status 1: its native front end was lost)."""
    raise_fd_limit()
    asyncio.run(serve_until_signal(lambda: ProxyServer(options, settings), _LOG))
    exit_if_front_end_failed()
