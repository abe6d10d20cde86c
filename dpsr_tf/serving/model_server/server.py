"""The model server process: gRPC (PredictionService, ModelService, health) + REST + polling.

`run_model_server(options)` blocks until SIGTERM/SIGINT, then stops taking requests (health
NOT_SERVING), lets in-flight requests finish, and unloads every version.
"""
import asyncio
import dataclasses
import logging
import os
import threading
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import heap_trim, stream_limits
from dpsr_tf.serving.front_end import (FrontEndOptions, NativeFrontEnd,
                                       exit_if_front_end_failed, stop_this_process)
from dpsr_tf.serving.grpc_calls import InFlight, add_servicer, serve_until_signal
from dpsr_tf.serving.model_server.api.framed_predict import FramedPredictServer
from dpsr_tf.serving.model_server.api.grpc_services import (RAW_RESPONSE_METHODS, ModelServicer,
                                                        PredictionServicer, SizedPredict)
from dpsr_tf.serving.startup import (COMPRESSION_ARGUMENT, ONEDNN_ENV, ONLY_UNCOMPRESSED,
                                     bind_grpc, freeze_heap, grpc_address,
                                     onednn_kernels_in_use, raise_fd_limit,
                                     start_heap_trimmer, write_port_file)
from dpsr_tf.serving.model_server.api import profiler_service
from dpsr_tf.serving.model_server.api.rest import RestGateway
from dpsr_tf.serving.model_server.api.server_core import CoreOptions, ServerCore

_LOG = logging.getLogger("serving.model_server")
SERVICE_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """The model server's settings (resolved from `dpsr serve` flags).

    Attributes:
      host: address to bind, gRPC and REST (loopback unless told otherwise).
      port: gRPC port (0: any free port; see port_file).
      rest_api_port: REST port (0: no REST API, as in TF Serving; -1: any free port).
      rest_api_timeout_seconds: REST predict timeout.
      rest_api_max_body_bytes: largest REST request body (larger: HTTP 413, body not read).
      rest_api_max_inflight_body_bytes: REST body bytes held at once by all connections
        (rest.RestGateway); 0: rest_api_max_body_bytes.
      rest_api_connection_timeout_seconds: a REST connection whose reads or writes stall this
        long (half-sent request, idle keep-alive) is closed; 0: never.
      model_config_file: ModelServerConfig file, re-read every
        model_config_file_poll_wait_seconds when > 0.
      monitoring: Prometheus settings (served on the REST port).
      ssl: TLS for gRPC, or None.
      allow_reload_config_request: False refuses HandleReloadConfigRequest.
      max_receive_message_bytes: largest accepted request message.
      port_file: when set, JSON {"grpc_port", "rest_api_port", "pid"} is written here once
        serving (atomic rename), so launchers can use port 0.
      core: CoreOptions.
      grpc_socket_path: also serve gRPC on this UNIX socket (--grpc_socket_path).
      grpc_channel_arguments: (key, value) gRPC server arguments (--grpc_channel_arguments).
      enable_profiler: serve tensorflow.ProfilerService on the gRPC port (--enable_profiler).
      heap_trim_interval_seconds: how often heap_trim.HeapTrimmer checks the resident size
        (--heap_trim_interval_seconds); 0: freed heap pages are never trimmed.
      max_streams_per_connection: calls one gRPC connection may have open at once
        (stream_limits.py, --max_streams_per_connection); 0: no limit.
      framed_predict_socket: also take Predict as frames on a UNIX socket at this path, for a
        proxy on this host (framed_predict.py, --framed_predict_socket); "": none.
      native_front_end: FrontEndOptions to put the C++ front end (front_end.py) on the gRPC
        port, the Python gRPC server behind it on a private UNIX socket; None: Python's own
        gRPC server takes the port (--front_end).
    """

    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 0
    rest_api_timeout_seconds: float = 30.0
    rest_api_max_body_bytes: int = 16 << 20
    rest_api_max_inflight_body_bytes: int = 0
    rest_api_connection_timeout_seconds: float = 30.0
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    monitoring: config_lib.MonitoringOptions = config_lib.MonitoringOptions()
    ssl: Optional[config_lib.SslOptions] = None
    allow_reload_config_request: bool = True
    max_receive_message_bytes: int = 64 << 20
    port_file: str = ""
    core: CoreOptions = CoreOptions()
    grpc_socket_path: str = ""
    grpc_channel_arguments: tuple = ()
    enable_profiler: bool = True
    heap_trim_interval_seconds: float = heap_trim.DEFAULT_INTERVAL_SECONDS
    max_streams_per_connection: int = stream_limits.DEFAULT_MAX_STREAMS_PER_CONNECTION
    framed_predict_socket: str = ""
    native_front_end: Optional[FrontEndOptions] = None


def server_arguments(opts: ServerOptions) -> list:
    """The gRPC server's arguments: the defaults, each replaced by a --grpc_channel_arguments
    value of the same key (gRPC keeps the first of two equal keys, so the user's would be
    ignored). SO_REUSEPORT is off unless asked for: a second server on a taken port fails at
    bind instead of silently sharing it; `grpc.so_reuseport=1` lets several processes share
    one port on purpose (docs/serving.md, "Several processes on one port"). Each connection
    has at most max_streams_per_connection calls open (stream_limits.py), or the limit the
    user's arguments set, without gRPC's overload protection refusing calls under it.
    Compressed requests are refused unread (startup.COMPRESSION_ARGUMENT)."""
    args = {"grpc.max_receive_message_length": opts.max_receive_message_bytes,
            "grpc.max_send_message_length": -1, "grpc.so_reuseport": 0,
            COMPRESSION_ARGUMENT: ONLY_UNCOMPRESSED}
    args.update(stream_limits.server_arguments(opts.max_streams_per_connection))
    args.update(opts.grpc_channel_arguments)
    return list(stream_limits.without_refusals(args).items())


class _ConfigFilePoller:
    """Re-reads --model_config_file and applies it when its text changes."""

    def __init__(self, path, interval, core, initial_text):
        self._path, self._interval, self._core = path, interval, core
        self._text = initial_text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="config_poller", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)

    def note_applied(self, config):
        del config  # a reload request wins until the file changes again

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                with open(self._path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                _LOG.error("cannot read --model_config_file %s: %s", self._path, e)
                continue
            if text == self._text:
                continue
            self._text = text
            try:
                cfg = config_lib.parse_text_proto(text, config_lib.ModelServerConfig,
                                                  f"--model_config_file {self._path}")
                self._core.reload_config(cfg)
                _LOG.info("applied the changed --model_config_file %s", self._path)
            except Exception as e:  # pylint: disable=broad-except
                _LOG.error("could not apply the changed --model_config_file: %s", e)


class ModelServer:
    """A running model server (use `run_model_server` for the process entry point)."""

    def __init__(self, options: ServerOptions, server_config):
        self.options = options
        self._server_config = server_config
        self.core = ServerCore(options.core)
        self._grpc = None
        self._rest = None
        self._health = None
        self._poller = None
        self._heap_trimmer = None
        self._in_flight = InFlight()
        self._front_end = None
        self._framed = None
        self._framed_shared = None  # --framed_predict_socket, for a proxy on this host
        self.grpc_port = None
        self.rest_api_port = None

    async def start(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.core.start, self._server_config)
        self._grpc = grpc.aio.server(options=server_arguments(opts))
        on_reload = None
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            with open(opts.model_config_file, encoding="utf-8") as f:
                text = f.read()
            self._poller = _ConfigFilePoller(opts.model_config_file,
                                             opts.model_config_file_poll_wait_seconds,
                                             self.core, text)
            on_reload = self._poller.note_applied
        predict = PredictionServicer(self.core, self._in_flight)
        add_servicer(prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                     predict, self._grpc, RAW_RESPONSE_METHODS,
                     request_parsers={"Predict": SizedPredict.parse})
        add_servicer(model_service_pb2_grpc.add_ModelServiceServicer_to_server,
                     ModelServicer(self.core, opts.allow_reload_config_request, on_reload),
                     self._grpc)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        if opts.enable_profiler:
            self._grpc.add_generic_rpc_handlers((profiler_service.ProfilerService().handler(),))
        if opts.native_front_end is not None:  # the port is the front end's; we sit behind it
            self._front_end = NativeFrontEnd(grpc_address(opts.host, opts.port),
                                             opts.native_front_end,
                                             opts.max_streams_per_connection,
                                             opts.max_receive_message_bytes,
                                             opts.grpc_channel_arguments,
                                             on_exit=stop_this_process)
            self._front_end.bind_behind(self._grpc)
            if self._front_end.framed_socket:
                self._framed = FramedPredictServer(predict, self._front_end.framed_socket,
                                                   opts.max_receive_message_bytes)
                self._framed.start()
        else:
            self.grpc_port = bind_grpc(self._grpc, opts.host, opts.port, opts.ssl)
        if opts.grpc_socket_path:  # as TF Serving: the same services, no TLS, on a UNIX socket
            if not self._grpc.add_insecure_port(f"unix:{opts.grpc_socket_path}"):
                raise OSError(f"cannot bind gRPC to unix:{opts.grpc_socket_path}")
        if opts.framed_predict_socket:
            self._framed_shared = FramedPredictServer(predict, opts.framed_predict_socket,
                                                      opts.max_receive_message_bytes,
                                                      shared=True)
            self._framed_shared.start()
        await self._grpc.start()
        if self._front_end is not None:
            # Started from the loop's thread, which lives as long as the server: the front end
            # stops when the thread that started it dies (PR_SET_PDEATHSIG).
            self.grpc_port = self._front_end.start()
            _LOG.info("The native front end (pid %d) takes gRPC calls on port %d and passes "
                      "them on in turns over %s", self._front_end.pid, self.grpc_port,
                      self._front_end.backend_socket)
        if opts.rest_api_port:
            metrics_path = (opts.monitoring.prometheus_path
                            if opts.monitoring.prometheus_enabled else None)
            self._rest = RestGateway(self.core, opts.host, max(0, opts.rest_api_port),
                                     opts.rest_api_timeout_seconds, metrics_path,
                                     opts.rest_api_max_body_bytes,
                                     opts.rest_api_connection_timeout_seconds,
                                     opts.rest_api_max_inflight_body_bytes)
            self.rest_api_port = self._rest.port
            self._rest.start()
        elif opts.monitoring.prometheus_enabled:
            _LOG.warning("monitoring_config_file enables Prometheus, but metrics are served on "
                         "the REST port and --rest_api_port is 0")
        if self._poller is not None:
            self._poller.start()
        freeze_heap()
        self._heap_trimmer = start_heap_trimmer(opts.heap_trim_interval_seconds)
        for service in ("",) + SERVICE_NAMES:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if opts.allow_reload_config_request and opts.host not in ("127.0.0.1", "::1",
                                                                  "localhost"):
            _LOG.warning("HandleReloadConfigRequest is accepted from anyone who can reach %s "
                         "(it can unload every model); pass --allow_reload_config_request=false "
                         "unless a trusted network or TLS with client_verify guards the port "
                         "(docs/serving.md, Security)", grpc_address(opts.host, self.grpc_port))
        _LOG.info("TensorFlow's oneDNN CPU kernels: %s (%s)",
                  "on" if onednn_kernels_in_use() else "off",
                  f"{ONEDNN_ENV}={os.environ.get(ONEDNN_ENV, '(unset)')}")
        _LOG.info("Running gRPC ModelServer at %s ...", grpc_address(opts.host, self.grpc_port))
        if opts.grpc_socket_path:
            _LOG.info("Running gRPC ModelServer at UNIX socket %s ...", opts.grpc_socket_path)
        if opts.framed_predict_socket:
            _LOG.info("Taking framed Predict calls at UNIX socket %s ...",
                      opts.framed_predict_socket)
        if self._rest is not None:
            _LOG.info("Exporting HTTP/REST API at:%s ...",
                      grpc_address(opts.host, self.rest_api_port))
        if opts.port_file:
            write_port_file(opts.port_file, grpc_port=self.grpc_port,
                            rest_api_port=self.rest_api_port or 0)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.stop()
        if self._front_end is not None:  # first: it drains the calls it holds into us
            await self._front_end.drain(grace_seconds)
        if self._framed is not None:  # the front end is gone: nothing more comes this way
            _LOG.info("framed Predict calls read: %d", self._framed.calls)
            self._framed.stop()
        rest_stopped = None
        if self._rest is not None:  # REST drains in a thread while gRPC drains on the loop
            rest_stopped = asyncio.get_running_loop().run_in_executor(
                None, self._rest.stop, grace_seconds)
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + grace_seconds
        if self._grpc is not None:
            await self._in_flight.stop_server(self._grpc, grace_seconds)
        if self._framed_shared is not None:  # refused since stop_server began draining, and
            # their runs went on meanwhile: they share its grace
            running = await loop.run_in_executor(
                None, self._framed_shared.drain, max(0.0, grace_ends - loop.time()))
            if running:
                _LOG.warning("stopping with %d framed Predict calls still running", running)
            _LOG.info("framed Predict calls read at %s: %d", self.options.framed_predict_socket,
                      self._framed_shared.calls)
            self._framed_shared.stop()
        if rest_stopped is not None:
            await rest_stopped
        await asyncio.get_running_loop().run_in_executor(None, self.core.stop)
        if self._heap_trimmer is not None:
            self._heap_trimmer.stop()
            _LOG.info("%s", self._heap_trimmer.summary())


def run_model_server(options: ServerOptions, server_config) -> None:
    """Serves until SIGTERM/SIGINT. `server_config` is the initial ModelServerConfig.

    Raises:
      SystemExit: (status 1) the native front end died and could not be started again.
    """
    soft, hard = raise_fd_limit()
    _LOG.info("File descriptors: %d allowed (RLIMIT_NOFILE soft %d, hard %d)", soft, soft, hard)
    asyncio.run(serve_until_signal(lambda: ModelServer(options, server_config), _LOG))
    exit_if_front_end_failed()
