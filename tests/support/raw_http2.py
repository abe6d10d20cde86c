"""A gRPC client written with the `h2` package, for what grpcio never does: a zero HTTP/2
flow-control window (the server can never send its answer), streams reset right after they open
("rapid reset"). Used by tests/serving/test_client_isolation.py and bench/hostile_bench.py."""
import socket
import struct

from tests.support.serving_testing import PREDICT_METHOD


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


class RawHttp2:
    """A gRPC client written with h2, doing what grpcio never does: a zero flow-control window
    (answers can never be sent), streams reset right after they are opened."""

    def __init__(self, port: int, window: int = 0):
        import h2.config  # pylint: disable=g-import-not-at-top
        import h2.connection  # pylint: disable=g-import-not-at-top
        import h2.settings  # pylint: disable=g-import-not-at-top
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.events = []
        self._flush()
        self.port = port

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self):
        """Reads what the server sent (settings, pings, window updates, headers, resets) and
        answers what the protocol requires; never acknowledges DATA, so windows stay shut."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.events.extend(self.conn.receive_data(chunk))
        self._flush()

    def open_predict(self, message: bytes, reset: bool = False) -> int:
        """Opens a Predict stream and sends `message`; resets it at once when `reset`."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", PREDICT_METHOD),
            (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
            ("te", "trailers")])
        data = grpc_frame(message)
        while self.conn.local_flow_control_window(sid) < len(data):
            self._flush()
            self.pump()
        self.conn.send_data(sid, data, end_stream=True)
        if reset:
            self.conn.reset_stream(sid)
        self._flush()
        return sid

    def open_streams(self) -> int:
        return len(self.conn.open_outbound_streams)

    def close(self):
        self.sock.close()
