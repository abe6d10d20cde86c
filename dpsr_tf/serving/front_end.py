"""The native gRPC front end (front_end_cc/, built from its main.cc): started by `dpsr serve
--front_end=native` in front of the server's gRPC port.

With it, the public gRPC port is served by a C++ process that queues every call per client
connection and hands them to the Python server, over a private UNIX socket, in turns and at
most `max_running` at once. A burst of calls from one client then costs the Python event loop
nothing until each call's turn, and calls that were cancelled or expired while they waited never
reach it (docs/serving.md, "The native front end"). The listening socket is the Python server's:
the process accepts from it, so when the process dies and is started again the port stays open
and clients that connect meanwhile wait in the backlog instead of being refused.
"""
import asyncio
import dataclasses
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Callable, Optional

from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY, forwarded_client

_LOG = logging.getLogger("serving.front_end")
# DPSR_FRONT_END_BINARY names another build of it (tools/front_end_sanitized.py: under ASan).
BINARY = (os.environ.get("DPSR_FRONT_END_BINARY") or
          os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpsr_front_end"))
_READY = re.compile(rb"dpsr_front_end listening on port (\d+)")
# A front end that dies is started again on its port: at once the first time in
# RESTART_WINDOW_S (clients wait in the listening socket's backlog meanwhile), then after
# RESTART_BACKOFF_S doubled for each further restart there; more than MAX_RESTARTS there and the
# server gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
RESTART_BACKOFF_S = 0.1


@dataclasses.dataclass(frozen=True)
class FrontEndOptions:
    """The front end's limits (`dpsr serve --front_end_*` flags).

    Attributes:
      max_running: calls at the Python server at once, all clients together (0: 16 per
        usable core, docs/serving.md "Admission limits").
      max_running_per_client: of those, from one client (0: 2 per usable core, at most
        max_running): enough for one client alone to keep every core busy, and no more, so a
        flood through the proxy does not delay everyone's calls (docs/benchmarks.md,
        "Misbehaving clients").
      initial_running_per_client: slow start: a client's share begins at this many calls and
        grows by one per answer delivered to it, so a client that never reads its answers (or
        resets its calls) gets no more computed at once (0: the whole share at once).
      max_queued_per_client: calls one connection may have waiting (more: RESOURCE_EXHAUSTED).
      max_queued: calls waiting in all (more: RESOURCE_EXHAUSTED).
      lifo_after_ms: adaptive LIFO: once a connection's oldest waiting call has waited this
        long, its newest waiting call goes next (front_end_cc/fair_gate.h); 0 (the default):
        arrival order always (docs/serving.md, "Overload").
      queue_target_ms, queue_interval_ms: queue delay control: a connection whose oldest
        waiting call has waited more than the target (or the measured service time, if
        longer) for a whole interval has its new calls refused at once with
        RESOURCE_EXHAUSTED until its queue is below the target again; target 0: off.
      max_unread_bytes_per_client: answer bytes one connection has not read yet; past it, its
        further answers are dropped with RESOURCE_EXHAUSTED instead of held.
      max_request_bytes_per_client, max_request_bytes: bytes of requests read and not yet
        answered (waiting for a turn, at the server, or having their answer written), of one
        connection and of all together; a call that would pass either is refused at once with
        RESOURCE_EXHAUSTED (a connection that holds none may always send one call; past the
        total, a connection may still hold 64 KiB of small calls); 0: one largest message
        (--max_receive_message_bytes) per connection, two in all.
      framed_max_request_bytes: with `framed_predict`, a Predict request of this many bytes
        or more goes over gRPC instead: the server reads the framed hop one request at a time,
        so a large one would hold every later call behind it; 0: every one framed.
      max_string_input_bytes: a Predict request with a string element longer than this is
        refused INVALID_ARGUMENT by the front end, with the server's message
        (front_end_cc/string_limit.h), instead of passed on for the server to parse and refuse;
        give the server's (or the proxy's) --max_string_input_bytes. 0: none refused there.
      hold_back_unread_bytes: past this many unread bytes a connection's waiting calls stop
        going to the server until it reads (the server's
        --max_unsent_response_bytes_per_client); 0: never held back.
      framed_predict: Predict calls go to the server as frames on a second private socket
        (`framed_socket`: serve it with model_server/api/framed_predict.py, or the proxy's
        proxy/framed_calls.py, before start()),
        not as gRPC calls on `backend_socket`.
      hold_back_total_unread_bytes: while all connections together have more than this unread,
        every connection with more than 64 KiB unread is held back (the server's
        --max_unsent_response_bytes); while the answers of connections that have read none
        yet are over it too, such a connection's answer over 16 KiB is dropped with
        RESOURCE_EXHAUSTED rather than held; 0: no such rule.
    """

    max_running: int = 0
    max_running_per_client: int = 0
    initial_running_per_client: int = 1
    max_queued_per_client: int = 4096
    max_queued: int = 65536
    lifo_after_ms: int = 0
    queue_target_ms: int = 5
    queue_interval_ms: int = 100
    max_unread_bytes_per_client: int = 64 << 20
    max_request_bytes_per_client: int = 0
    max_request_bytes: int = 0
    framed_max_request_bytes: int = 1 << 20
    max_string_input_bytes: int = 0
    hold_back_unread_bytes: int = 4 << 20
    hold_back_total_unread_bytes: int = 8 << 20
    framed_predict: bool = False


def is_built() -> bool:
    """Whether the front end's executable is there to start (`make build`)."""
    return os.access(BINARY, os.X_OK)


_GAVE_UP = threading.Event()
# The private directory of each front end (its sockets and log), under the temporary directory,
# and the socket in it the Python server listens on.
DIRECTORY_PREFIX = "dpsr-front-end-"
BACKEND_SOCKET = "backend.sock"


def remove_stale_directories(parent: Optional[str] = None) -> int:
    """Removes the private directories that servers killed without a stop() left behind (a
    SIGKILL, an OOM kill), and returns how many: each one of this user's whose backend socket
    refuses a connection, so no server listens there any more. A live server's socket accepts,
    and one still binding has no socket yet, so neither is touched; the check needs no process
    ids, which a container's /tmp shared with other PID namespaces would make unreliable."""
    parent = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(DIRECTORY_PREFIX):
            continue
        try:
            if os.lstat(path).st_uid != os.getuid():  # another user's: never probed
                continue
        except OSError:
            continue
        if not _is_dead_socket(os.path.join(path, BACKEND_SOCKET)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += not os.path.exists(path)
    return removed


def _is_dead_socket(path: str) -> bool:
    """Whether `path` is a UNIX socket file nothing listens on any more."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:  # absent, not a socket, no permission, a full backlog: leave it
        return False
    return False


def stop_this_process() -> None:
    """Stops this server as SIGTERM does, and makes `exit_if_front_end_failed` fail it:
    NativeFrontEnd's `on_exit` for a server whose front end died and could not be started
    again (it has no gRPC port left)."""
    _GAVE_UP.set()
    os.kill(os.getpid(), signal.SIGTERM)


def exit_if_front_end_failed() -> None:
    """After the server stopped: a non-zero exit (SystemExit) when it stopped because its
    front end was lost, so that a supervisor that restarts failed services restarts it."""
    if _GAVE_UP.is_set():
        raise SystemExit("the server stopped because its native front end died and could "
                         "not be restarted (see the log above); exiting with status 1")


def client_of(context, peer: str, trusted: bool) -> str:
    """Who a call is from for a server's per-client limits: the client connection the front
    end names in CLIENT_METADATA_KEY when `trusted` (the server sits behind its own front end,
    reachable only through its private socket), else `peer`."""
    named = forwarded_client(context) if trusted else None
    return peer if named is None else named


class NativeFrontEnd:
    """One dpsr_front_end process listening on `address` and forwarding to a UNIX socket that it
    creates in a private directory (`backend_socket`: bind the Python server there first).

    Args:
      address: host:port to listen on (port 0: any free port; `port` tells which).
      options: FrontEndOptions.
      max_streams_per_connection: HTTP/2 streams one connection may open (0: no limit).
      max_receive_message_bytes: largest request message accepted.
      channel_arguments: (key, value) gRPC server arguments for the listening port (the
        user's --grpc_channel_arguments); each replaces the front end's default for its key.
      on_exit: called (from a watcher thread) if the process ends before stop() and cannot be
        started again (more than MAX_RESTARTS exits in RESTART_WINDOW_S, or a start that
        fails): the server cannot take gRPC calls without it, so it stops itself. Each other
        exit (killed, crashed) starts a fresh process on the same listening socket after a
        backoff; calls it held fail UNAVAILABLE, and connections made meanwhile wait in the
        socket's backlog for the fresh process.
    """

    def __init__(self, address: str, options: FrontEndOptions, max_streams_per_connection: int,
                 max_receive_message_bytes: int, channel_arguments: tuple = (),
                 on_exit: Optional[Callable[[], None]] = None):
        if not is_built():
            raise OSError(f"the native front end {BINARY} is not built; run `make build` "
                          "(it needs the Debian package libgrpc++-dev, which tools/bootstrap.sh "
                          "installs)")
        remove_stale_directories()
        self._dir = tempfile.mkdtemp(prefix=DIRECTORY_PREFIX)  # mode 0700: ours alone
        self.backend_socket = os.path.join(self._dir, BACKEND_SOCKET)
        self.framed_socket = (os.path.join(self._dir, "framed.sock") if options.framed_predict
                              else None)
        self._log_path = os.path.join(self._dir, "front_end.log")
        self._args = [
            BINARY, f"--backend=unix:{self.backend_socket}",
            f"--max_running={options.max_running}",
            f"--max_running_per_client={options.max_running_per_client}",
            f"--initial_running_per_client={options.initial_running_per_client}",
            f"--max_queued_per_client={options.max_queued_per_client}",
            f"--max_queued={options.max_queued}",
            f"--lifo_after_ms={options.lifo_after_ms}",
            f"--queue_target_ms={options.queue_target_ms}",
            f"--queue_interval_ms={options.queue_interval_ms}",
            f"--max_unread_bytes_per_client={options.max_unread_bytes_per_client}",
            f"--max_request_bytes_per_client={options.max_request_bytes_per_client}",
            f"--max_request_bytes={options.max_request_bytes}",
            f"--framed_max_request_bytes={options.framed_max_request_bytes}",
            f"--max_string_input_bytes={options.max_string_input_bytes}",
            f"--hold_back_unread_bytes={options.hold_back_unread_bytes or (1 << 62)}",
            "--hold_back_total_unread_bytes="
            f"{options.hold_back_total_unread_bytes or (1 << 62)}",
            f"--max_streams_per_connection={max_streams_per_connection}",
            f"--max_receive_message_bytes={max_receive_message_bytes}",
            f"--client_metadata_key={CLIENT_METADATA_KEY}"] + [
                f"--channel_arg={key}={value}" for key, value in channel_arguments] + (
                    [f"--framed_backend={self.framed_socket}"] if self.framed_socket else [])
        self._proc: Optional[subprocess.Popen] = None
        self._on_exit = on_exit
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the process and its socket, replaced while stop() runs
        self._address = address
        self._reuse_port = str(dict(channel_arguments).get("grpc.so_reuseport", 0)) == "1"
        self._listening: Optional[socket.socket] = None
        self.port = 0
        self.restarts = 0
        self.summary = ""

    def bind_behind(self, server) -> None:
        """Binds grpc.aio `server` to the private socket this front end forwards to.

        Raises:
          OSError: the bind failed.
        """
        if not server.add_insecure_port(f"unix:{self.backend_socket}"):
            raise OSError(f"cannot bind gRPC to unix:{self.backend_socket}")

    async def drain(self, grace_seconds: float) -> None:
        """stop() off the event loop (the server behind keeps serving what it drains), its
        summary logged."""
        _LOG.info("%s", await asyncio.get_running_loop().run_in_executor(
            None, self.stop, grace_seconds))

    def start(self, timeout: float = 30.0) -> int:
        """Starts the process and returns the port it listens on; a watcher thread starts it
        again if it dies while serving (see `on_exit`).

        Raises:
          OSError: it exited or did not report its port within `timeout` (its message included).
        """
        try:
            self._listening = listening_socket(self._address, self._reuse_port)
            self._args.append(f"--listen_fd={self._listening.fileno()}")
            self.port = self._spawn(self._args, timeout)
        except OSError:
            self._cleanup()
            raise
        threading.Thread(target=self._watch, name="front_end_watch", daemon=True).start()
        return self.port

    def _spawn(self, args, timeout: float) -> int:
        """Starts one process with `args`; returns its port (OSError if it did not start)."""
        with self._lock:  # stop() may be closing the listening socket
            if self._listening is None:
                raise OSError("the native front end was stopped")
            # Its log goes to a file, not a pipe: a pipe nobody drains would block it once full.
            with open(self._log_path, "ab") as log:
                proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log,
                                        pass_fds=(self._listening.fileno(),))
            self._proc = proc
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                match = _READY.search(line)
                if match:
                    return int(match.group(1))
            if proc.poll() is not None:
                break
        proc.kill()
        proc.wait(timeout=10)
        raise OSError("the native front end did not start: "
                      + (self._log_tail() or line.decode(errors="replace").strip()
                         or "no message"))

    def stop(self, grace_seconds: float = 10.0) -> str:
        """Stops taking calls, lets the running ones finish (up to `grace_seconds`), and returns
        its one-line summary of counts."""
        self._stopping.set()
        self._close_listening()  # the process's copy is then the last: the port closes with it
        self._terminate(grace_seconds)
        self._cleanup()
        return self.summary

    def _terminate(self, grace_seconds: float) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_seconds + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.summary = self._log_tail()

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def _watch(self) -> None:
        """Waits on the process; one that exits while serving is started again on the same
        port, from this thread, which then waits on it in turn (PR_SET_PDEATHSIG ends a
        child when the thread that started it ends)."""
        recent = []  # monotonic times of the restarts in the last RESTART_WINDOW_S
        while True:
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            _LOG.error("the native front end exited (code %s) while serving: %s; its port stays "
                       "open for the fresh one", code, self._log_tail() or "no message")
            now = time.monotonic()
            recent = [t for t in recent if now - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                self._give_up(f"it exited {len(recent) + 1} times in {RESTART_WINDOW_S:.0f} s")
                return
            backoff = RESTART_BACKOFF_S * 2 ** (len(recent) - 1) if recent else 0.0
            if self._stopping.wait(backoff):
                return
            recent.append(now)
            try:
                self._spawn(self._args, 30.0)
            except OSError as e:
                if not self._stopping.is_set():
                    self._give_up(str(e))
                return
            self.restarts += 1
            _LOG.warning("the native front end restarted (pid %d, restart %d) on port %d",
                         self._proc.pid, self.restarts, self.port)
            if self._stopping.is_set():  # stop() ran while it started: it may have missed it
                self._terminate(10.0)
                return

    def _give_up(self, why: str) -> None:
        _LOG.error("restarting it gave up (%s); stopping the server, which cannot take gRPC "
                   "calls without it", why)
        if self._on_exit is not None:
            self._on_exit()

    def _log_tail(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def _close_listening(self) -> None:
        with self._lock:
            if self._listening is not None:
                self._listening.close()
                self._listening = None

    def _cleanup(self) -> None:
        self._close_listening()
        shutil.rmtree(self._dir, ignore_errors=True)


def listening_socket(address: str, reuse_port: bool = False) -> socket.socket:
    """A TCP socket listening on `address` (host:port or [ipv6]:port; port 0: any free port), for
    the front end to accept from: bound to the first address the host resolves to, an IPv6
    wildcard taking IPv4 too; SO_REUSEPORT when `reuse_port` (the user's
    `grpc.so_reuseport=1`: several servers on one port).

    Raises:
      OSError: the address does not resolve or cannot be bound (in use), naming it.
    """
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, bound = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot bind gRPC to {address}: {e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(bound)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)  # the front end polls it and accepts until EAGAIN
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind gRPC to {address}: {e.strerror or e}") from e
    return sock
