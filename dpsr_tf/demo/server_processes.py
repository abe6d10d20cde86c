"""Starting model servers and proxies as real processes (tests, benchmarks, the demo).

    with start_model_server(model_base_path="/models/dpsr", model_name="dpsr") as server:
        with start_proxy({"dpsr": ((server.address,),)}) as proxy:
            stub = prediction_stub(proxy.address)

Each process binds port 0 and reports its ports through --port_file (no port races), is
declared ready only when its gRPC health service says SERVING, dies with its parent
(dpsr_tf/parent_death.py), and is stopped with SIGTERM (then SIGKILL) on exit. `stop_all()` stops
every process this module started (tests call it at session end). Each process has a work
folder (its log, its port file, a proxy's generated config); one made in the default temp
location is removed when the process stops cleanly (exit code 0) and kept, named in the
errors, when it failed.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf import parent_death
from dpsr_tf.serving import client_retry
from dpsr_tf.serving.proxy import config as proxy_config

# The folder that holds the dpsr_tf package (the checkout, or site-packages): children import
# dpsr_tf from it whatever their working directory and PYTHONPATH.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STARTED: List["ServerProcess"] = []
# How long a starting process may take to serve: a guard against a hung start, not a speed
# requirement (a process that exits fails at once; several TensorFlow processes starting
# together on a loaded machine take minutes).
START_TIMEOUT_S = 600.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (prefer port 0 + --port_file where the address can wait)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_health(address: str, timeout: float, service: str = "",
                    is_alive=lambda: True, credentials=None) -> None:
    """Blocks until the gRPC health service at `address` reports SERVING.

    Raises:
      TimeoutError, or RuntimeError when `is_alive()` turns False.
    """
    deadline = time.monotonic() + timeout
    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not is_alive():
                raise RuntimeError(f"the process serving {address} exited")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    finally:
        channel.close()
    raise TimeoutError(f"{address} did not become healthy within {timeout:.0f} s")


class ServerProcess:
    """A `dpsr serve` or `dpsr proxy` child process.

    Args:
      log_dir: where its work folder (log.txt, ports.json) is made; None: the default temp
        location, and the folder is removed by a stop() that finds the process exited with
        0 (a failed process keeps it: its errors name the log).
    """

    def __init__(self, subcommand: str, flags: Sequence[str], name: str,
                 log_dir: Optional[str] = None, host: str = "127.0.0.1", credentials=None):
        self.name = name
        self.credentials = credentials  # grpc.ChannelCredentials when the port speaks TLS
        self.host = host
        self.workdir = tempfile.mkdtemp(prefix=f"dpsr-{name}-", dir=log_dir)
        self._own_workdir = log_dir is None
        self.log_path = os.path.join(self.workdir, "log.txt")
        self._port_file = os.path.join(self.workdir, "ports.json")
        self.args = [sys.executable, "-m", "dpsr_tf.cli", subcommand,
                     f"--host={host}", f"--port_file={self._port_file}"] + list(flags)
        self.grpc_port = None
        self.rest_api_port = None
        self.proc = None
        self.config_file = None
        self.framed_socket = None  # `dpsr serve --framed_predict_socket`, when it has one
        self.socket_dir = None  # its own folder, when the work folder's path is too long

    @property
    def replica(self):
        """How a proxy config lists this server: its address, or (address, framed socket) for
        a local_replica (proxy_config.proxy_config_text's form)."""
        return (self.address, self.framed_socket) if self.framed_socket else self.address

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_api_port}"

    def launch(self) -> "ServerProcess":
        """Starts the process without waiting (see wait_ready)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=parent_death.child_env(env), cwd=_PACKAGE_PARENT)
        _STARTED.append(self)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "ServerProcess":
        """Waits for the port file and a SERVING health check; stops the process on failure."""
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start(self, timeout: float = START_TIMEOUT_S) -> "ServerProcess":
        return self.launch().wait_ready(timeout)

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self._port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (log: "
                                   f"{self.log_path}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start in {timeout:.0f} s (log: "
                                   f"{self.log_path}):\n{self.log_tail()}")
            time.sleep(0.05)
        with open(self._port_file, encoding="utf-8") as f:
            ports = json.load(f)
        self.grpc_port = ports["grpc_port"]
        self.rest_api_port = ports.get("rest_api_port") or None
        wait_for_health(self.address, max(1.0, deadline - time.monotonic()),
                        is_alive=lambda: self.proc.poll() is None,
                        credentials=self.credentials)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code. A clean exit (0)
        removes the work folder when this process made it in the default temp location."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self in _STARTED:
            _STARTED.remove(self)
        if self.proc.returncode == 0 and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def model_server_process(model_base_path: Optional[str] = None, model_name: str = "default",
                         model_config_file: Optional[str] = None, flags: Sequence[str] = (),
                         rest: bool = False, name: str = "model_server",
                         log_dir: Optional[str] = None, port: int = 0,
                         credentials=None, local: bool = False) -> ServerProcess:
    """A `dpsr serve` process on free ports, not started yet (`.start()` or `start_all`).

    Args:
      model_base_path, model_name: one model (as --model_base_path/--model_name), or
      model_config_file: a ModelServerConfig file.
      flags: extra `dpsr serve` flags ("--enable_batching", ...).
      rest: also open the REST port.
      port: gRPC port (0: any free port, reported through --port_file).
      credentials: grpc.ChannelCredentials to reach a TLS port (--ssl_config_file).
      local: also take Predict as frames on a socket in its work folder
        (--framed_predict_socket), for a proxy on this host: `.replica` lists it as a
        local_replica.
    """
    args = [f"--port={port}"]
    if model_config_file:
        args.append(f"--model_config_file={model_config_file}")
    else:
        args += [f"--model_base_path={model_base_path}", f"--model_name={model_name}"]
    if rest:
        args.append("--rest_api_port=-1")
    server = ServerProcess("serve", args + list(flags), name, log_dir, credentials=credentials)
    if local:
        path = os.path.join(server.workdir, "predict.sock")
        if len(os.fsencode(path)) > proxy_config.MAX_SOCKET_PATH_BYTES:  # a deep work folder
            server.socket_dir = tempfile.mkdtemp(prefix="dpsr-sock-")
            path = os.path.join(server.socket_dir, "predict.sock")
        server.framed_socket = path
        server.args.append(f"--framed_predict_socket={path}")
    server.grpc_port = port or None  # a fixed port is known (and `.address` usable) at once
    return server


def start_model_server(*args, timeout: float = START_TIMEOUT_S, **kwargs) -> ServerProcess:
    """Starts `dpsr serve` (arguments of model_server_process) and waits until it serves."""
    return model_server_process(*args, **kwargs).start(timeout)


def start_all(processes: Sequence[ServerProcess], timeout: float = START_TIMEOUT_S):
    """Launches every process at once, then waits for each (faster than one by one)."""
    try:
        for p in processes:
            p.launch()
        for p in processes:
            p.wait_ready(timeout)
    except BaseException:
        for p in processes:
            p.stop()
        raise
    return list(processes)


def proxy_process(routes: Optional[Dict[str, Tuple[Tuple[str, ...], ...]]] = None,
                  config_file: Optional[str] = None, flags: Sequence[str] = (),
                  name: str = "proxy", log_dir: Optional[str] = None,
                  **model_fields) -> ServerProcess:
    """A `dpsr proxy` process over `routes` (model -> shards -> replica addresses) or a config
    file, not started yet; extra keyword arguments go into every model of the generated
    config (e.g. deadline_ms=500, partial_policy="FAIL"). `.config_file` is its config."""
    process = ServerProcess("proxy", [], name, log_dir)
    if config_file is None:  # in the work folder: removed with it
        config_file = os.path.join(process.workdir, "proxy.config")
        with open(config_file, "w", encoding="utf-8") as f:
            f.write(proxy_config.proxy_config_text(routes, **model_fields))
    process.args += ["--port=0", f"--proxy_config_file={config_file}"] + list(flags)
    process.config_file = config_file
    return process


def start_proxy(*args, timeout: float = START_TIMEOUT_S, **kwargs) -> ServerProcess:
    """Starts `dpsr proxy` (arguments of proxy_process) and waits until it serves."""
    return proxy_process(*args, **kwargs).start(timeout)


def stop_all() -> None:
    """Stops every process started here that is still running."""
    for process in list(_STARTED):
        process.stop()


def prediction_stub(address: str, credentials=None, retry_unavailable: bool = False):
    """A tensorflow_serving PredictionServiceStub on a new channel (the real client);
    `retry_unavailable`: with the retry policy of dpsr_tf/serving/client_retry.py."""
    options = client_retry.retry_channel_options() if retry_unavailable else None
    channel = (grpc.secure_channel(address, credentials, options=options) if credentials
               else grpc.insecure_channel(address, options=options))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)
