"""The proxy's Prometheus endpoint: prometheus_client's WSGI app on one path, in a thread.

prometheus_client renders the registry (text format, gzip when asked, `name[]` filters); this
module only adds what the library's own start_http_server lacks: answering on the configured
path alone (404 elsewhere, as the model server's REST API does) and a stop().
"""
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client as prom
from prometheus_client.exposition import ThreadingWSGIServer


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        del format, args  # one line per scrape would flood the proxy's log


class MetricsHttpServer:
    """Serves `registry` at http://host:port<path> until stop(); port 0 picks a free port."""

    def __init__(self, host: str, port: int, path: str, registry: prom.CollectorRegistry):
        metrics_app = prom.make_wsgi_app(registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO", "") != path:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [f"not found; metrics are at {path}\n".encode()]
            return metrics_app(environ, start_response)

        class Server(ThreadingWSGIServer):
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        self._httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="metrics").start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
