"""Start-up plumbing shared by the model server and the proxy: binding the gRPC port, the
port file a supervisor reads, the file-descriptor limit, refusing compressed requests,
freezing the start-up heap out of the garbage collector, where glibc puts large buffers (with
the heap trimmer that goes with it), and the model server's choice of TensorFlow's CPU
kernels."""
import gc
import json
import os
import resource
from typing import Optional

import grpc

from dpsr_tf.serving.heap_trim import HeapTrimmer, libc_function


def grpc_address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_grpc(server, host: str, port: int, ssl) -> int:
    """Binds a grpc.aio server to host:port (TLS when `ssl` is an SSL config) and returns the
    bound port; a failed bind is an OSError naming the address. Shared by server and proxy."""
    address = grpc_address(host, port)
    try:
        if ssl is not None:
            credentials = grpc.ssl_server_credentials(
                [(ssl.server_key, ssl.server_cert)], root_certificates=ssl.custom_ca,
                require_client_auth=ssl.client_verify)
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as e:  # grpc reports a failed bind this way
        what = ("in use, or the TLS certificate or key was refused?" if ssl is not None
                else "in use?")
        raise OSError(f"cannot bind gRPC to {address} ({what}): {e}") from e
    if not bound:
        raise OSError(f"cannot bind gRPC to {address}")
    return bound


def raise_fd_limit() -> tuple:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit (children inherit it) and
    returns (soft, hard) as they are now.

    Every connection holds a descriptor: under a soft limit of 1,024 (a common default) about
    a thousand idle clients would use them all, while the hard limit allows far more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel refuses
            pass
    return soft, hard


# gRPC (the C core and grpcio alike) inflates a compressed message in full before it compares
# its size with the receive limit, so a 1 MB gzip request can take 1 GiB: the servers enable
# no compression algorithm, and gRPC refuses a compressed request (UNIMPLEMENTED, "Compression
# algorithm 'gzip' is disabled") before reading its message (docs/serving.md, "Operations").
COMPRESSION_ARGUMENT = "grpc.compression_enabled_algorithms_bitset"
ONLY_UNCOMPRESSED = 1  # bit 0: GRPC_COMPRESS_NONE


def freeze_heap() -> None:
    """Moves every object alive after start-up (TensorFlow's modules, the loaded graphs) out of
    the garbage collector's view, so that the full collections that the garbage of many
    requests triggers do not walk them all and stall every request in flight."""
    gc.collect()
    gc.freeze()


# Where no heap trimmer runs, allocations of at least this many bytes get pages of their own,
# unmapped when freed.
LARGE_BUFFER_BYTES = 4 << 20
# Where the heap trimmer runs (heap_trim.py), allocations below this (glibc's own ceiling for
# its moving threshold) come from the heap.
HEAP_BUFFER_BYTES = 32 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def set_large_buffer_policy(trimmed: bool) -> bool:
    """Decides where glibc puts large buffers (request bodies, big answers, batch tensors);
    True when set.

    By default glibc moves its mmap threshold to the size of each large buffer freed, so what
    it keeps depends on the traffic's history: a server that refused large requests stayed
    larger (docs/benchmarks.md, "Misbehaving clients"). With `trimmed` (the process runs a
    heap_trim.HeapTrimmer) buffers under HEAP_BUFFER_BYTES come from the heap, where a freed
    one below the heap's top is reused by the next instead of faulting fresh pages in (a 4
    MiB request's copy out of gRPC and its parse: 5.0 against 0.5 ms;
    bench/large_buffer_bench.py), and the trimmer gives such pages back. Without it, buffers
    of LARGE_BUFFER_BYTES or more are unmapped when freed. Either way the heaps' tops are
    given back as glibc does by default (128 KiB of free space on top): the threads' arenas,
    whose tops malloc_trim does not touch, keep nothing for long. Left alone where libc is
    not glibc, or where the operator set MALLOC_MMAP_THRESHOLD_ (glibc reads it at start)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return False
    return mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFER_BYTES if trimmed else LARGE_BUFFER_BYTES) == 1


def start_heap_trimmer(interval_seconds: float) -> Optional[HeapTrimmer]:
    """Starts a heap_trim.HeapTrimmer checking every `interval_seconds` (none at 0, or where
    libc has no malloc_trim) and sets the large-buffer policy to match: buffers come from the
    heap only where a trimmer gives them back. Returns the running trimmer, or None."""
    trimmer = HeapTrimmer(interval_seconds) if interval_seconds > 0 else None
    if trimmer is not None and not trimmer.start():
        trimmer = None
    set_large_buffer_policy(trimmed=trimmer is not None)
    return trimmer


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_eigen_kernels(environ=os.environ) -> bool:
    """Turns TensorFlow's oneDNN CPU kernels off for this process unless `environ` already
    sets ONEDNN_ENV (an operator's choice wins). TensorFlow reads it once, when it loads:
    call this before anything imports it. Returns True when it set the variable.

    Why off: oneDNN keeps what it allocated for each large batch shape, so a server that saw
    large batches never gives that memory back; Eigen's kernels serve the DPSR servable at the
    same latency (docs/benchmarks.md, "Misbehaving clients"; docs/serving.md, "Sizing"). TF
    Serving's standard build has no oneDNN either."""
    if ONEDNN_ENV in environ:
        return False
    environ[ONEDNN_ENV] = "0"
    return True


def onednn_kernels_in_use() -> bool:
    """Whether the loaded TensorFlow runs its oneDNN CPU kernels (read back from TensorFlow)."""
    # deferred: the server imports this module before TensorFlow (see prefer_eigen_kernels)
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


def write_port_file(path: str, **ports) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(ports, pid=os.getpid()), f)
    os.replace(tmp, path)
