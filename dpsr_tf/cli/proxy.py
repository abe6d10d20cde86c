"""dpsr proxy: one TF-Serving PredictionService endpoint over replicated and sharded servers.

  dpsr proxy --port=8500 --proxy_config_file=proxy.config --rest_api_port=8501

The config (docs/serving.md, dpsr_tf/serving/proxy/config.py) maps each model name to its shards and
each shard to the model servers (replicas) that hold it. Sharded answers are merged into one
global top-K; a shard that is down or slow yields an answer from the rest with the output
"partial" set (or an error, with partial_policy FAIL).
"""
import logging
import sys

from absl import flags

from dpsr_tf.cli import front_end_flags
from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import heap_trim, startup, stream_limits
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.proxy import peer_limits

_PORT = flags.DEFINE_integer("port", 8500, "Port to listen on for gRPC API (0: any free port).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 for every "
                            "interface.")
_CONFIG = flags.DEFINE_string("proxy_config_file", "", "Text-format dpsr.serving.ProxyConfig.")
_POLL = flags.DEFINE_float("config_file_poll_wait_seconds", 0,
                           "Re-read --proxy_config_file this often (0: read once).")
_REST_API_PORT = flags.DEFINE_integer("rest_api_port", 0, "HTTP port for Prometheus metrics "
                                      "(0: none, -1: any free port).")
_MONITORING = flags.DEFINE_string("monitoring_config_file", "", "MonitoringConfig text proto "
                                  "(metrics path; enabled by default on --rest_api_port).")
_SSL = flags.DEFINE_string("ssl_config_file", "", "SSLConfig text proto for the client port.")
_BACKEND_CA = flags.DEFINE_string(
    "backend_ca_file", "", "PEM file of the CA that signed the model servers' certificates: "
    "the proxy speaks TLS to every backend (the servers' --ssl_config_file). Empty: plaintext "
    "unless --backend_tls.")
_BACKEND_TLS = flags.DEFINE_bool("backend_tls", False, "Speak TLS to the model servers, "
                                 "verifying them against the system's CAs (or "
                                 "--backend_ca_file).")
_BACKEND_CERT = flags.DEFINE_string(
    "backend_client_cert_file", "", "PEM certificate the proxy presents to model servers "
    "whose SSLConfig has client_verify (mutual TLS); needs --backend_client_key_file.")
_BACKEND_KEY = flags.DEFINE_string("backend_client_key_file", "",
                                   "PEM private key of --backend_client_cert_file.")
_BACKEND_TARGET = flags.DEFINE_string(
    "backend_ssl_target_name", "", "Name the model servers' certificates carry, when it is not "
    "the host of their replica address (e.g. replicas by IP, certificates by DNS name).")
_PORT_FILE = flags.DEFINE_string("port_file", "", "Write {grpc_port, rest_api_port, pid} as "
                                 "JSON here once serving.")
_BACKEND_CONNECTIONS = flags.DEFINE_integer(
    "backend_connections", 1, "TCP connections to each model server address, used in turn. "
    "Model servers of several processes on one port (SO_REUSEPORT) spread connections, not "
    "calls: give about 4 per process (docs/serving.md, \"Several processes on one port\").")

_MAX_CALLS_PER_PEER = flags.DEFINE_integer(
    "max_concurrent_calls_per_peer", peer_limits.DEFAULT_MAX_CALLS_PER_PEER,
    "Calls one client connection may have in flight through the proxy; more are answered "
    "RESOURCE_EXHAUSTED at once, so that one client cannot crowd out the others (0: no limit).")
_MAX_BACKEND_CALLS = flags.DEFINE_integer(
    "max_backend_calls_in_flight", stream_limits.DERIVED,
    "Client calls doing backend work at once; more wait in the proxy (until their deadline), and "
    "a freed slot goes to the client connection with the fewest calls doing backend work, so "
    "one client's flood waits behind its own calls (-1: 64 per usable core, 128 on 2 cores, as "
    "many as a model server lets one connection open; 0: no limit).", lower_bound=-1)

_MAX_BACKEND_CALLS_PER_PEER = flags.DEFINE_integer(
    "max_backend_calls_per_peer", 0, "Of the client calls doing backend work at once, the most "
    "one client connection holds, so that another client's call finds a slot free at once "
    "instead of waiting for a flood's next answer (0: half of --max_backend_calls_in_flight).",
    lower_bound=0)
_HEAP_TRIM = flags.DEFINE_float(
    "heap_trim_interval_seconds", heap_trim.DEFAULT_INTERVAL_SECONDS, "How often the proxy "
    "checks its resident size and its heap's free bytes and, when either grew "
    f"{heap_trim.DEFAULT_MIN_GROWTH_BYTES >> 20} MiB since the last trim, returns freed heap "
    "pages to the system (glibc malloc_trim). While it runs, buffers under "
    f"{startup.HEAP_BUFFER_BYTES >> 20} MiB come from the heap, for the next to reuse. 0: "
    f"never, and buffers of {startup.LARGE_BUFFER_BYTES >> 20} MiB or more get pages of their "
    "own.", lower_bound=0.0)
_MAX_STREAMS = flags.DEFINE_integer(
    "max_streams_per_connection", stream_limits.DERIVED,
    "Calls one client connection may have open at once (HTTP/2 "
    "SETTINGS_MAX_CONCURRENT_STREAMS); the client's gRPC library holds its further calls until "
    "one ends, so a flood waits at its source (-1: 64 per usable core, 128 on 2 cores; 256 per "
    "core with the native front end, whose gate refuses a connection's excess at once, 512 on "
    "2 cores; 0: no limit).", lower_bound=-1)
_MAX_STRING = flags.DEFINE_integer(
    "max_string_input_bytes", 4096,
    "Longest string element of a Predict request the proxy sends on; a longer one is refused "
    "INVALID_ARGUMENT here, as the model servers would refuse it, instead of copied to every "
    "shard. Give the servers' --max_string_input_bytes (0: not checked here).", lower_bound=0)
_MAX_ELEMENTS = flags.DEFINE_integer(
    "max_input_elements", 1 << 20,
    "Most values one input of a Predict request may declare (the product of its shape); more "
    "are refused INVALID_ARGUMENT here, as the model servers would refuse them. Give the "
    "servers' --max_input_elements (0: not checked here).", lower_bound=0)


def _fail(message: str):
    print(f"dpsr proxy: {message}", file=sys.stderr)
    sys.exit(2)


def _read_pem(flag) -> bytes:
    try:
        with open(flag.value, "rb") as f:
            data = f.read()
    except OSError as e:
        _fail(f"--{flag.name}: cannot read {flag.value}: {e.strerror}")
    if b"-----BEGIN" not in data:
        _fail(f"--{flag.name}: {flag.value} is not a PEM file")
    return data


def _backend_tls(routing):
    """BackendTls from the --backend_* flags, or None (plaintext)."""
    given = [f for f in (_BACKEND_CA, _BACKEND_CERT, _BACKEND_KEY, _BACKEND_TARGET) if f.value]
    if not given and not _BACKEND_TLS.value:
        return None
    if bool(_BACKEND_CERT.value) != bool(_BACKEND_KEY.value):
        _fail("--backend_client_cert_file and --backend_client_key_file go together")
    return routing.BackendTls(
        root_certificates=_read_pem(_BACKEND_CA) if _BACKEND_CA.value else None,
        private_key=_read_pem(_BACKEND_KEY) if _BACKEND_KEY.value else None,
        certificate_chain=_read_pem(_BACKEND_CERT) if _BACKEND_CERT.value else None,
        target_name=_BACKEND_TARGET.value)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not _CONFIG.value:
        _fail("--proxy_config_file is required (see docs/serving.md for the format)")
    logging.getLogger().setLevel(logging.INFO)
    # these load TensorFlow (the TF Serving protos): only once the flags are checked
    from dpsr_tf.serving.proxy import server as proxy, request_checks, routing

    try:
        settings = proxy_config.read_proxy_settings(_CONFIG.value)
        monitoring = config_lib.MonitoringOptions(prometheus_enabled=True)
        if _MONITORING.value:
            monitoring = config_lib.read_monitoring_options(_MONITORING.value)
        ssl = config_lib.read_ssl_options(_SSL.value)
    except ServingError as e:
        _fail(e.message)
    backend_tls = _backend_tls(routing)
    if _BACKEND_CONNECTIONS.value < 1:
        _fail(f"--backend_connections is {_BACKEND_CONNECTIONS.value}; it must be >= 1")
    backend_calls = stream_limits.resolve(_MAX_BACKEND_CALLS.value)
    if (_MAX_BACKEND_CALLS_PER_PEER.value and backend_calls
            and _MAX_BACKEND_CALLS_PER_PEER.value > backend_calls):
        _fail(f"--max_backend_calls_per_peer is {_MAX_BACKEND_CALLS_PER_PEER.value}; it must be "
              f"at most --max_backend_calls_in_flight ({backend_calls})")
    if _MAX_CALLS_PER_PEER.value < 0:
        _fail(f"--max_concurrent_calls_per_peer is {_MAX_CALLS_PER_PEER.value}; it must be >= 0 "
              "(0: no limit)")
    try:
        native_front_end = front_end_flags.front_end_options(
            ssl, max_string_input_bytes=_MAX_STRING.value)
    except ValueError as e:
        _fail(str(e))
    streams = stream_limits.resolve(_MAX_STREAMS.value,
                                    native_front_end=native_front_end is not None)
    options = proxy.ProxyOptions(host=_HOST.value, port=_PORT.value,
                                 proxy_config_file=_CONFIG.value,
                                 config_file_poll_wait_seconds=_POLL.value,
                                 rest_api_port=_REST_API_PORT.value, monitoring=monitoring,
                                 ssl=ssl, port_file=_PORT_FILE.value, backend_tls=backend_tls,
                                 backend_connections=_BACKEND_CONNECTIONS.value,
                                 max_concurrent_calls_per_peer=_MAX_CALLS_PER_PEER.value,
                                 max_backend_calls_in_flight=backend_calls,
                                 max_backend_calls_per_peer=_MAX_BACKEND_CALLS_PER_PEER.value,
                                 max_streams_per_connection=streams,
                                 heap_trim_interval_seconds=_HEAP_TRIM.value,
                                 input_limits=request_checks.ProxyRequestLimits(
                                     max_string_bytes=_MAX_STRING.value,
                                     max_elements=_MAX_ELEMENTS.value),
                                 native_front_end=native_front_end)
    try:
        proxy.run_proxy(options, settings)
    except OSError as e:
        _fail(f"cannot start: {e}")
