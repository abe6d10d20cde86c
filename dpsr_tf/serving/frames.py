"""The framed Predict hop's protocol, Python's side (the front end's: front_end_cc/framed_backend.h,
which documents every field).

The native front end hands Predict calls to the process behind it (the model server, or the
proxy) as frames on a private UNIX socket instead of as gRPC calls; both ends trust each other,
so a frame that breaks the protocol ends the connection (FrameError).
"""
import struct
from typing import Iterable, Optional, Tuple

import grpc

# u32 length of the rest, u8 kind, 3 zero bytes, u64 call id.
HEAD = struct.Struct("<IB3xQ")
REQUEST, CANCEL, ANSWER = 1, 2, 3
_REQUEST_FIELDS = struct.Struct("<qI")  # deadline in microseconds (-1: none), client length
_ANSWER_FIELDS = struct.Struct("<iI")   # status code, message length
_U32 = struct.Struct("<I")
# Bytes a request frame's fields and client name may add to the largest request.
FRAME_OVERHEAD = 64 << 10
MAX_FRAME = (1 << 32) - 1  # the most a frame's u32 length can say


class FrameError(Exception):
    """A frame that breaks the protocol: the connection it came on ends."""


def body_size(head: bytes, max_frame: int) -> Tuple[int, int, int]:
    """(kind, call id, body size) of a frame head from the front end.

    Raises:
      FrameError: not a request or cancel frame, or a body over `max_frame` bytes.
    """
    length, kind, call_id = HEAD.unpack(head)
    size = length - (HEAD.size - 4)
    if size < 0 or size > max_frame or kind not in (REQUEST, CANCEL):
        raise FrameError(f"a frame of kind {kind} and {length} bytes breaks the protocol")
    return kind, call_id, size


def parse_request(body) -> Tuple[int, str, memoryview]:
    """(deadline in microseconds or -1, client name, request bytes) of a request frame's body.

    Raises:
      FrameError: the body is shorter than its fields or its client name runs past its end.
    """
    if len(body) < _REQUEST_FIELDS.size:
        raise FrameError(f"a request frame of {len(body)} bytes breaks the protocol")
    deadline_us, client_length = _REQUEST_FIELDS.unpack_from(body)
    start = _REQUEST_FIELDS.size
    if client_length > len(body) - start:
        raise FrameError("a request frame's client name runs past its end")
    client = bytes(body[start:start + client_length]).decode("utf-8", "replace")
    return deadline_us, client, memoryview(body)[start + client_length:]


def answer_frame(call_id: int, code: grpc.StatusCode, message: str, payload: bytes,
                 trailers: Optional[Iterable[Tuple[str, str]]] = None) -> bytes:
    """The bytes of one answer frame; `trailers`: trailing metadata for the client (plain
    lowercase keys, printable ASCII values: the front end refuses others)."""
    text = message.encode("utf-8", "replace")
    meta = b""
    for key, value in trailers or ():
        for s in (key.encode("ascii"), value.encode("ascii")):
            meta += _U32.pack(len(s)) + s
    body = _ANSWER_FIELDS.pack(code.value[0], len(text)) + text + _U32.pack(len(meta)) + meta
    return HEAD.pack(HEAD.size - 4 + len(body) + len(payload), ANSWER, call_id) + body + payload


def request_frame(call_id: int, deadline_us: int, client: str, payload: bytes) -> bytes:
    """The bytes of one request frame (`deadline_us` -1: none), as the front end writes it; the
    proxy writes them too, to a model server's --framed_predict_socket."""
    name = client.encode("utf-8", "replace")
    body = _REQUEST_FIELDS.pack(deadline_us, len(name)) + name
    return HEAD.pack(HEAD.size - 4 + len(body) + len(payload), REQUEST, call_id) + body + payload


def cancel_frame(call_id: int) -> bytes:
    return HEAD.pack(HEAD.size - 4, CANCEL, call_id)


def answer_body_size(head: bytes, max_frame: int) -> Tuple[int, int]:
    """(call id, body size) of an answer frame's head, read by the side that sends requests.

    Raises:
      FrameError: not an answer frame, or a body over `max_frame` bytes.
    """
    length, kind, call_id = HEAD.unpack(head)
    size = length - (HEAD.size - 4)
    if size < _ANSWER_FIELDS.size + 4 or size > max_frame or kind != ANSWER:
        raise FrameError(f"a frame of kind {kind} and {length} bytes is not an answer")
    return call_id, size


def parse_answer(body: bytes) -> Tuple[int, str, list, bytes]:
    """(status code, message, [(key, value)] trailers, response bytes) of an answer frame's
    body (the proxy's framed shard calls; tests and tools that play the front end).

    Raises:
      FrameError: a field runs past the body's end.
    """
    try:
        code, n = _ANSWER_FIELDS.unpack_from(body)
        at = _ANSWER_FIELDS.size + n
        message = bytes(body[_ANSWER_FIELDS.size:at]).decode("utf-8", "replace")
        (meta_length,) = _U32.unpack_from(body, at)
        at += 4
        end, trailers = at + meta_length, []
        while at < end:
            pair = []
            for _ in range(2):
                (length,) = _U32.unpack_from(body, at)
                pair.append(bytes(body[at + 4:at + 4 + length]).decode("ascii"))
                at += 4 + length
            trailers.append(tuple(pair))
    except (struct.error, UnicodeDecodeError) as e:
        raise FrameError(f"an answer frame of {len(body)} bytes breaks the protocol: {e}") from e
    if at != end or end > len(body):
        raise FrameError(f"an answer frame's trailers run past their length ({len(body)} bytes)")
    return code, message, trailers, bytes(body[end:])
