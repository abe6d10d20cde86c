"""Prometheus metrics of the model server and the proxy (prometheus_client, own registry).

Label values for model names come only from configured models ("<unknown>" otherwise), so
clients sending random names cannot blow up the series count.
"""
import prometheus_client as prom

# Latency buckets from 0.5 ms to 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RUNS_AHEAD_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
UNKNOWN = "<unknown>"


class ServerMetrics:
    """Model server metrics.

    Series:
      dpsr_serving_request_count_total{model_name, model_version, api, entrypoint, status}
      dpsr_serving_request_latency_seconds{model_name, model_version, api, entrypoint}
      dpsr_serving_runtime_latency_seconds{model_name, model_version}: session runs
      dpsr_serving_batch_size{model_name, model_version}: rows per session run
      dpsr_serving_model_load_count_total{model_name, status}
      dpsr_serving_model_version_available{model_name, model_version}: 1 while serving
      dpsr_serving_unbatched_runs_started_total{model_name}: unbatched requests whose run
        started
      dpsr_serving_unbatched_runs_ahead{model_name}: per started unbatched request, the runs
        (of any client) that started while it waited: a client's backlog delays another
        client by about one run per thread (run_queue.py)
      dpsr_serving_requests_dropped_total{model_name, reason}: unbatched requests answered
        without running: deadline_exceeded, cancelled (the client gave up while it waited),
        queue_full (UNAVAILABLE), client_queue_full (RESOURCE_EXHAUSTED)
      dpsr_serving_queued_requests: unbatched requests waiting for a run thread
      dpsr_serving_unsent_response_bytes: bytes of answers computed and not yet sent (their
        client reads slowly or not at all)
      dpsr_serving_calls_refused_total{reason}: calls answered RESOURCE_EXHAUSTED before
        running because their client (or all clients) hold too many unsent answers
    """

    def __init__(self):
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.request_count = prom.Counter(
            "dpsr_serving_request_count", "Requests by model, version, API and status code.",
            ["model_name", "model_version", "api", "entrypoint", "status"],
            registry=self.registry)
        self.request_latency = prom.Histogram(
            "dpsr_serving_request_latency_seconds", "Request latency inside the server.",
            ["model_name", "model_version", "api", "entrypoint"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.runtime_latency = prom.Histogram(
            "dpsr_serving_runtime_latency_seconds", "Session run latency (one batch).",
            ["model_name", "model_version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = prom.Histogram(
            "dpsr_serving_batch_size", "Rows per session run.", ["model_name", "model_version"],
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.load_count = prom.Counter(
            "dpsr_serving_model_load_count", "Version loads by outcome.",
            ["model_name", "status"], registry=self.registry)
        self.available = prom.Gauge(
            "dpsr_serving_model_version_available", "1 while a version serves requests.",
            ["model_name", "model_version"], registry=self.registry)
        self.runs_started = prom.Counter(
            "dpsr_serving_unbatched_runs_started", "Unbatched requests whose run started.",
            ["model_name"], registry=self.registry)
        self.runs_ahead = prom.Histogram(
            "dpsr_serving_unbatched_runs_ahead",
            "Runs that started while an unbatched request waited in the queue.",
            ["model_name"], buckets=RUNS_AHEAD_BUCKETS, registry=self.registry)
        self.requests_dropped = prom.Counter(
            "dpsr_serving_requests_dropped", "Unbatched requests answered without running.",
            ["model_name", "reason"], registry=self.registry)
        self.queued_requests = prom.Gauge(
            "dpsr_serving_queued_requests", "Unbatched requests waiting for a run thread.",
            registry=self.registry)
        self.unsent_response_bytes = prom.Gauge(
            "dpsr_serving_unsent_response_bytes", "Bytes of answers not yet sent.",
            registry=self.registry)
        self.calls_refused = prom.Counter(
            "dpsr_serving_calls_refused",
            "Calls refused because their client holds too many unsent answers.",
            ["reason"], registry=self.registry)

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)


class ProxyMetrics:
    """Proxy metrics.

    Series:
      dpsr_proxy_request_count_total{model_name, api, status}
      dpsr_proxy_request_latency_seconds{model_name, api}
      dpsr_proxy_backend_request_count_total{model_name, shard, replica, status}
      dpsr_proxy_partial_response_count_total{model_name}
      dpsr_proxy_hedged_call_count_total{model_name, shard}: second attempts sent
      dpsr_proxy_replica_ejection_count_total{replica}
      dpsr_proxy_replica_ejected{replica}: 1 while out of rotation
    """

    def __init__(self):
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.request_count = prom.Counter(
            "dpsr_proxy_request_count", "Proxy requests by model, API and status code.",
            ["model_name", "api", "status"], registry=self.registry)
        self.request_latency = prom.Histogram(
            "dpsr_proxy_request_latency_seconds", "End-to-end latency inside the proxy.",
            ["model_name", "api"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.backend_count = prom.Counter(
            "dpsr_proxy_backend_request_count", "Calls to model servers by shard and replica.",
            ["model_name", "shard", "replica", "status"], registry=self.registry)
        self.partial_count = prom.Counter(
            "dpsr_proxy_partial_response_count", "Answers merged from fewer than all shards.",
            ["model_name"], registry=self.registry)
        self.hedge_count = prom.Counter(
            "dpsr_proxy_hedged_call_count", "Calls also sent to another replica of the shard "
            "because the first was slower than the hedge delay.", ["model_name", "shard"],
            registry=self.registry)
        self.ejection_count = prom.Counter(
            "dpsr_proxy_replica_ejection_count", "Times a replica was taken out of rotation.",
            ["replica"], registry=self.registry)
        self.replica_ejected = prom.Gauge(
            "dpsr_proxy_replica_ejected", "1 while a replica is out of rotation.", ["replica"],
            registry=self.registry)

    def replica_ejected_changed(self, replica, ejected: bool) -> None:
        """routing.EjectionListener: counts ejections and sets the gauge."""
        if ejected:
            self.ejection_count.labels(replica.address).inc()
        self.replica_ejected.labels(replica.address).set(1 if ejected else 0)

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)
