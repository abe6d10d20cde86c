"""How many calls one client connection may have open at once, as the gRPC servers (model
server and proxy) advertise it: HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS.

Without a limit, a client that opens thousands of calls on one connection has every one
accepted, and the server's one event loop takes each arrival, refusal and answer in turn
ahead of other clients' calls, which wait seconds behind one flood (docs/benchmarks.md,
"Misbehaving clients"). With a limit, the client's own gRPC transport holds its extra calls until
one of its open calls ends: a flood waits at its source, and a well-behaved client with many
calls in flight only queues, with no error. Clients are told apart by connection, so the
limit is per client as far as the server can tell. The native front end's port allows four
times as many: its gate, not the client's transport, holds or refuses a connection's extra
calls, and a refusal there takes about a millisecond.

gRPC's "overload protection" (`grpc.http.overload_protection`, on by default in grpcio
1.60) counts a stream against the limit until the server has freed its call, later than the
client sees the call end, so the client opens a stream the server refuses (RST_STREAM
REFUSED_STREAM, UNAVAILABLE to the caller): half of 2,000 calls on one connection with a
limit of 128. It is turned off with the limit: the server then counts open HTTP/2 streams as
the client does, and every call is served (tests/serving/test_stream_limits.py). That holds
however the limit is given (`--grpc_channel_arguments=grpc.max_concurrent_streams=N` too),
unless the operator names the protection argument themselves.
"""
from dpsr_tf.serving import capacity

# -1 for the limit: derived from the usable cores (capacity.streams_per_connection, 64 per
# core: 128, nginx's HTTP/2 default, on 2; 256 per core on the native front end's port, whose
# gate refuses the excess at once instead). Also the proxy's default
# --max_backend_calls_in_flight, so the proxy's fair gate, not the transport's FIFO, decides
# which of its clients' calls go next.
DERIVED = -1
DEFAULT_MAX_STREAMS_PER_CONNECTION = capacity.streams_per_connection()

MAX_STREAMS_ARGUMENT = "grpc.max_concurrent_streams"
OVERLOAD_PROTECTION_ARGUMENT = "grpc.http.overload_protection"


def resolve(limit: int, native_front_end: bool = False) -> int:
    """A --max_streams_per_connection (or the proxy's --max_backend_calls_in_flight) value:
    DERIVED (-1) -> 64 per usable core, or 256 for the native front end's port (capacity.py);
    any other value as given (0: no limit)."""
    if limit != DERIVED:
        return limit
    return capacity.streams_per_connection(native_front_end=native_front_end)


def server_arguments(max_streams_per_connection: int) -> list:
    """gRPC server arguments limiting each connection to `max_streams_per_connection` open
    calls (0: no limit, gRPC's default).

    Raises:
      ValueError: a negative limit.
    """
    if max_streams_per_connection < 0:
        raise ValueError(f"max_streams_per_connection is {max_streams_per_connection}; it "
                         "must be >= 0 (0: no limit)")
    if max_streams_per_connection == 0:
        return []
    return [(MAX_STREAMS_ARGUMENT, max_streams_per_connection),
            (OVERLOAD_PROTECTION_ARGUMENT, 0)]


def without_refusals(arguments: dict) -> dict:
    """`arguments` (key -> value, the server's final gRPC arguments) with overload protection
    turned off wherever they set a stream limit and do not name the protection themselves."""
    limit = arguments.get(MAX_STREAMS_ARGUMENT)
    if isinstance(limit, int) and limit > 0 and OVERLOAD_PROTECTION_ARGUMENT not in arguments:
        arguments = dict(arguments)
        arguments[OVERLOAD_PROTECTION_ARGUMENT] = 0
    return arguments
