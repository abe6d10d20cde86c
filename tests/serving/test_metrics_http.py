"""The proxy's Prometheus endpoint (prometheus_client's WSGI app): the configured path answers
the registry's text, any other path 404, and stop() frees the port."""
import socket

import requests
from prometheus_client.parser import text_string_to_metric_families

from dpsr_tf.serving.metrics import ProxyMetrics
from dpsr_tf.serving.metrics_http import MetricsHttpServer

PATH = "/monitoring/prometheus/metrics"


def test_serves_the_registry_on_its_path_only():
    metrics = ProxyMetrics()
    metrics.request_count.labels("dpsr", "predict", "OK").inc(3)
    server = MetricsHttpServer("127.0.0.1", 0, PATH, metrics.registry)
    try:
        base = f"http://127.0.0.1:{server.port}"
        answer = requests.get(base + PATH, timeout=30)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(answer.text) for s in f.samples}
        key = ("dpsr_proxy_request_count_total",
               (("api", "predict"), ("model_name", "dpsr"), ("status", "OK")))
        assert samples[key] == 3.0
        assert requests.get(base + "/metrics", timeout=30).status_code == 404
    finally:
        server.stop()
    with socket.socket() as sock:  # nothing listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (past TIME_WAIT)
        sock.bind(("127.0.0.1", server.port))
