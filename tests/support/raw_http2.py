"""A gRPC client written with the `h2` package, for what grpcio never does: a zero HTTP/2
flow-control window (the server can never send its answer), streams reset right after they open
("rapid reset"), compressed messages. Used by tests/serving/test_client_isolation.py and bench/hostile_bench.py."""
import socket
import struct
import zlib

from tests.support.serving_testing import PREDICT_METHOD


def gzip_zeros(n: int) -> bytes:
    """`n` zero bytes (a multiple of 1 MiB) in the gzip format: about 1,000 times smaller."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip format
    chunk = bytes(1 << 20)
    return b"".join([deflate.compress(chunk) for _ in range(n >> 20)] + [deflate.flush()])


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

    def compressed_predict(self, gzip_body: bytes) -> dict:
        """One Predict whose message is `gzip_body`, flagged compressed with grpc-encoding
        gzip (grpcio would compress it itself); returns the answer's headers and trailers
        (grpc-status, grpc-message). Stops sending once the server has ended the stream."""
        import h2.events  # pylint: disable=g-import-not-at-top
        import h2.exceptions  # pylint: disable=g-import-not-at-top
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", PREDICT_METHOD),
            (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
            ("te", "trailers"), ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")])
        data = b"\x01" + struct.pack(">I", len(gzip_body)) + gzip_body
        sent = 0
        try:
            while sent < len(data):
                room = min(self.conn.local_flow_control_window(sid),
                           self.conn.max_outbound_frame_size, len(data) - sent)
                if room <= 0:
                    if self._ended(sid):  # answered before it had the whole message
                        break
                    self._flush()
                    self.pump()
                    continue
                self.conn.send_data(sid, data[sent:sent + room])
                sent += room
                self._flush()
            else:
                self.conn.end_stream(sid)
                self._flush()
        except h2.exceptions.StreamClosedError:
            pass  # the server answered before it had the whole message
        while not self._ended(sid):
            self.pump()
        headers = {}
        for event in self.events:
            if (isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                    and event.stream_id == sid):
                headers.update((k.decode() if isinstance(k, bytes) else k,
                                v.decode() if isinstance(v, bytes) else v)
                               for k, v in event.headers)
        return headers

    def _ended(self, sid: int) -> bool:
        import h2.events  # pylint: disable=g-import-not-at-top
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                   and e.stream_id == sid for e in self.events)

    def open_streams(self) -> int:
        return len(self.conn.open_outbound_streams)

    def close(self):
        self.sock.close()
