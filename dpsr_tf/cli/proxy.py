"""dpsr proxy: one TF-Serving PredictionService endpoint over replicated and sharded servers.

  dpsr proxy --port=8500 --proxy_config_file=proxy.config --rest_api_port=8501

The config (docs/serving.md, serving/proxy_config.py) maps each model name to its shards and
each shard to the model servers (replicas) that hold it. Sharded answers are merged into one
global top-K; a shard that is down or slow yields an answer from the rest with the output
"partial" set (or an error, with partial_policy FAIL).
"""
import logging
import sys

from absl import flags

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
_PORT_FILE = flags.DEFINE_string("port_file", "", "Write {grpc_port, rest_api_port, pid} as "
                                 "JSON here once serving.")


def _fail(message: str):
    print(f"dpsr proxy: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not _CONFIG.value:
        _fail("--proxy_config_file is required (see docs/serving.md for the format)")
    logging.getLogger().setLevel(logging.INFO)
    # pylint: disable=g-import-not-at-top
    from serving import config as config_lib
    from serving import proxy, proxy_config
    from serving.errors import ServingError

    try:
        settings = proxy_config.read_proxy_settings(_CONFIG.value)
        monitoring = config_lib.MonitoringOptions(prometheus_enabled=True)
        if _MONITORING.value:
            monitoring = config_lib.read_monitoring_options(_MONITORING.value)
        ssl = config_lib.read_ssl_options(_SSL.value)
    except ServingError as e:
        _fail(e.message)
    options = proxy.ProxyOptions(host=_HOST.value, port=_PORT.value,
                                 proxy_config_file=_CONFIG.value,
                                 config_file_poll_wait_seconds=_POLL.value,
                                 rest_api_port=_REST_API_PORT.value, monitoring=monitoring,
                                 ssl=ssl, port_file=_PORT_FILE.value)
    try:
        proxy.run_proxy(options, settings)
    except OSError as e:
        _fail(f"cannot start: {e}")
