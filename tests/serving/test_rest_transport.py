"""The REST gateway's HTTP transport against hostile and ordinary clients: answers in one write
on TCP_NODELAY sockets, chunked request bodies, JSON that Python parses but cannot use (huge
integers, lone surrogates), early row checks, clients that vanish, and the memory that
concurrent large bodies may take. Raw sockets against a real `dpsr serve` process, plus an
in-process gateway where a count must be observed inside the server."""
import json
import socket
import struct
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

from tensorflow.core.framework import types_pb2

from dpsr_tf.serving.model_server.api import http_body, rest, rest_json
from dpsr_tf.serving.model_server.lifecycle import signatures
from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.model_server.api.predict import RequestLimits
from tests.support import serving_testing as st

MAX_ROWS = 1000
REST_TIMEOUT_MS = 120_000  # large bodies may queue for the body budget this long
PREDICT = "/v1/models/dpsr:predict"


@pytest.fixture(scope="module")
def server(toy_model_dir, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("rest_transport"))
    proc = process.start_model_server(
        toy_model_dir, "dpsr", rest=True, log_dir=logs,
        flags=[f"--max_request_rows={MAX_ROWS}", "--max_k=300",
               f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
               "--rest_api_connection_timeout_in_ms=20000"])
    yield proc
    assert proc.stop() == 0, proc.log_tail()


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=60)


def _read_answer(reader):
    """(status, headers, body) of one HTTP/1.1 answer read from a socket file."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def _request(method, path, body=b"", extra=b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


def _chunked(path, chunks, trailer=b"") -> bytes:
    out = [f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()]
    for i, chunk in enumerate(chunks):
        ext = b";note=x" if i == 0 else b""  # a chunk extension, ignored
        out.append(b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk))
    out.append(b"0\r\n" + trailer + b"\r\n")
    return b"".join(out)


def _query_body(queries, k=5) -> bytes:
    return json.dumps({"inputs": {"query": queries, "k": k}}).encode()


def _item_ids(answer: bytes):
    return json.loads(answer)["outputs"]["item_ids"]


# ----------------------------------------------------------------------------- one write

def _spec(alias, dtype, shape=(-1,)):
    return signatures.TensorSpec(alias, f"{alias}:0", dtype, shape)


# A signature Classify can run (one string input of tf.Examples, "scores"), and one it cannot
# (a DPSR retrieval signature: a raw query and k).
CLASSIFY_SIG = signatures.Signature(
    "classify_x", signatures.CLASSIFY_METHOD, {"inputs": _spec("inputs", types_pb2.DT_STRING)},
    {"scores": _spec("scores", types_pb2.DT_FLOAT, (-1, 1)),
     "outputs": _spec("outputs", types_pb2.DT_FLOAT, (-1, 1))}, None)  # Regress can run it too
RETRIEVAL_SIG = signatures.Signature(
    "retrieve", signatures.PREDICT_METHOD,
    {"query": _spec("query", types_pb2.DT_STRING), "k": _spec("k", types_pb2.DT_INT32, ())},
    {"item_ids": _spec("item_ids", types_pb2.DT_INT64, (-1, -1))}, None)


class _FakeServable:
    def __init__(self, sigs):
        self.name, self.version, self.signatures = "m", 1, sigs

    def signature(self, name, api="predict"):
        return signatures.find_signature(self.signatures, name, self.name, self.version, api)


class _FakeCore:
    """Just enough of a ServerCore for the gateway's transport: metrics, limits, and one
    servable's signatures (by default, serving_default is a classify signature)."""

    def __init__(self, max_rows=0, sigs=None):
        self.metrics = types.SimpleNamespace(exposition=lambda: b"# metrics\n" * 50)
        self.options = types.SimpleNamespace(limits=RequestLimits(max_rows=max_rows),
                                             enable_signature_method_name_check=False)
        servable = _FakeServable(sigs or {"serving_default": CLASSIFY_SIG})
        handle = types.SimpleNamespace(servable=servable, release=lambda: None)
        self.manager = types.SimpleNamespace(acquire=lambda spec: handle)
        self.classified = 0

    def classify(self, request, timeout):
        self.classified += 1
        raise AssertionError("a request over the row limit reached the core")


@pytest.fixture
def gateway():
    core = _FakeCore(max_rows=MAX_ROWS)
    gw = rest.RestGateway(core, "127.0.0.1", 0, 5.0, metrics_path="/metrics")
    gw.start()
    yield gw, core
    gw.stop(1.0)


def test_each_answer_is_one_write_on_a_nodelay_socket(gateway, monkeypatch):
    """Nagle's algorithm plus the client's delayed ACK held the second of two writes (head,
    then body) ~40 ms on keep-alive connections; now TCP_NODELAY is set on every accepted
    socket and each answer, head and body, leaves in a single write."""
    gw, _ = gateway
    handler_class = gw._httpd.RequestHandlerClass  # pylint: disable=protected-access
    nodelay, writes = [], []
    setup = handler_class.setup

    def watched_setup(handler):
        setup(handler)
        nodelay.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        write = handler.wfile.write
        handler.wfile.write = lambda data: (writes.append(bytes(data)), write(data))[1]

    monkeypatch.setattr(handler_class, "setup", watched_setup)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        answers = []
        for path in ("/metrics", "/v1/models", "/metrics", "/nope"):  # keep-alive: one socket
            sock.sendall(_request("GET", path))
            answers.append(_read_answer(reader))
    assert [a[0] for a in answers] == [200, 400, 200, 404]
    assert nodelay == [1]  # one connection, option set
    assert len(writes) == len(answers)
    for data, (_, _, body) in zip(writes, answers):
        assert data.startswith(b"HTTP/1.1 ") and data.endswith(body) and body


# ----------------------------------------------------------------------------- chunked

def test_chunked_predict_then_the_same_connection_keeps_serving(server):
    """A chunked body (with an extension and a trailer) is read whole and answered like the
    same body sent with a Content-Length; the next request on the connection is then parsed
    from the right place (before: refused, and the chunks were read as a new request)."""
    body = _query_body(["cordless drill", "apple iphone 15 pro"])
    status, reference = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {},
                                     body)
    assert status == 200, reference
    with _connect(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(_chunked(PREDICT, [body[:7], body[7:40], body[40:]],
                              trailer=b"X-Checksum: none\r\n"))
        status, headers, answer = _read_answer(reader)
        assert status == 200, answer
        assert json.loads(answer) == json.loads(reference)
        assert "connection" not in headers  # kept alive
        sock.sendall(_request("GET", "/v1/models/dpsr"))
        status, _, answer = _read_answer(reader)
        assert status == 200 and json.loads(answer)["model_version_status"][0]["state"] == \
            "AVAILABLE"


SMUGGLED = b"GET /v1/models/dpsr HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("case", ["one declared chunk", "many chunks"])
def test_over_limit_chunked_body_is_413_and_the_connection_closed(server, case):
    """Over --rest_api_max_body_bytes (16 MiB), counted while reading: 413, then the
    connection is closed, so no byte of the unread body is taken for a request."""
    with _connect(server) as sock:
        reader = sock.makefile("rb")
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        if case == "one declared chunk":
            sock.sendall(head.encode() + b"%x\r\n" % (17 << 20) + SMUGGLED)
        else:  # 17 chunks of 1 MiB: refused at the 17th, before it is read
            sock.sendall(head.encode())
            chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
            try:
                for _ in range(17):
                    sock.sendall(chunk)
                sock.sendall(SMUGGLED)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed while we were still sending
        status, headers, answer = _read_answer(reader)
        assert status == 413, answer
        assert "--rest_api_max_body_bytes" in json.loads(answer)["error"]
        assert headers.get("connection") == "close"
        try:
            rest_of_stream = reader.read()
        except ConnectionResetError:
            rest_of_stream = b""
        assert rest_of_stream == b""  # nothing more: the smuggled GET was not answered


@pytest.mark.parametrize("head, body, status, fragment", [
    ("Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n", 400, "not a hexadecimal chunk"),
    ("Transfer-Encoding: chunked", b"2\r\n{}}}\r\n0\r\n\r\n", 400, "not followed by CRLF"),
    ("Transfer-Encoding: gzip, chunked", b"0\r\n\r\n", 501, "is not supported"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 5", b"0\r\n\r\n", 400,
     "both Transfer-Encoding and Content-Length"),
    ("Content-Length: 2\r\nContent-Length: 3", b"{}", 400, "several different Content-Length"),
], ids=["bad size", "short chunk", "gzip", "TE and CL", "two lengths"])
def test_malformed_framing_is_refused_and_closed(server, head, body, status, fragment):
    with _connect(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n".encode() + body +
                     SMUGGLED)
        got, headers, answer = _read_answer(reader)
        assert got == status and fragment in json.loads(answer)["error"], answer
        assert headers.get("connection") == "close" and reader.read() == b""


# ----------------------------------------------------------------------------- JSON values

@pytest.mark.parametrize("path, body, fragment", [
    (PREDICT, b'{"instances": [{"query": "drill", "k": ' + b"9" * 5000 + b"}]}", "digits"),
    (PREDICT, b'{"instances": ["\\ud800"]}', "lone UTF-16 surrogate"),
    (PREDICT, b'{"instances": [{"query": "ok \\udfff"}]}', "lone UTF-16 surrogate"),
    (PREDICT, b'{"signature_name": "\\ud800", "instances": ["drill"]}', "lone UTF-16 surrogate"),
    (PREDICT, b'{"instances": ["\xed\xa0\x80"]}', "Invalid value"),
    (PREDICT, '{"instances": ["drill"]}'.encode("utf-16"), "Invalid value"),
], ids=["5000-digit int", "lone high surrogate", "lone low surrogate", "in signature_name",
        "UTF-8-encoded surrogate", "UTF-16 body"])
def test_unusable_json_values_are_400_not_500(server, path, body, fragment):
    """Python's json parses these, but a 5,000-digit integer exceeds int()'s digit limit
    (ValueError) and a lone surrogate cannot be encoded as UTF-8 later: both gave HTTP 500."""
    status, answer = st.send_http("127.0.0.1", server.rest_api_port, "POST", path, {}, body)
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error.startswith("JSON Parse error: ") and fragment in error, error


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/models/m:classify", b'{"examples": [{"\\udbff": 1}]}', "lone UTF-16 surrogate"),
    ("/v1/models/m:regress", b'{"examples": [{"x": ' + b"1" * 4400 + b"}]}", "digits"),
], ids=["in a feature name", "4400-digit feature"])
def test_unusable_json_in_examples_is_400_not_500(gateway, path, body, fragment):
    """The same for :classify and :regress bodies, on a servable whose signature takes
    tf.Examples (a retrieval servable refuses them before their JSON is decoded)."""
    gw, core = gateway
    status, answer = st.send_http("127.0.0.1", gw.port, "POST", path, {}, body)
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error.startswith("JSON Parse error: ") and fragment in error, error
    assert core.classified == 0


@pytest.mark.parametrize("query", ["\\ud83d\\ude80 rocket", "back\\\\ud800slash"],
                         ids=["surrogate pair", "escaped backslash"])
def test_valid_escapes_still_serve(server, query):
    """A surrogate pair (an emoji) and the text "\\ud800" after an escaped backslash are valid
    Unicode: answered like any query, with k results."""
    body = b'{"inputs": {"query": ["%s"], "k": 3}}' % query.encode()
    status, answer = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {}, body)
    assert status == 200, answer
    assert len(_item_ids(answer)[0]) == 3


# ----------------------------------------------------------------------------- row checks

def test_classify_rows_are_counted_before_any_example_is_built(gateway, monkeypatch):
    """2M tiny examples over --max_request_rows: refused from the list's length; no example
    proto is built (before: all 2M were built, 9 s, then the core counted them)."""
    gw, core = gateway
    built = []
    real_example = rest_json._example  # pylint: disable=protected-access
    monkeypatch.setattr(rest_json, "_example", lambda *a: (built.append(1), real_example(*a)))
    body = b'{"examples": [' + b",".join([b"{}"] * 2_000_000) + b"]}"
    status, answer = st.send_http("127.0.0.1", gw.port, "POST", "/v1/models/m:classify", {},
                                  body, timeout=120)
    assert status == 400, answer
    assert json.loads(answer)["error"] == (
        f"Input has 2000000 examples; the limit is {MAX_ROWS} (--max_request_rows); split it "
        "into smaller requests")
    assert not built and core.classified == 0


@pytest.mark.parametrize("sigs, named, fragment", [
    # A retrieval servable, no signature named: serving_default is checked before decoding.
    ({"serving_default": RETRIEVAL_SIG}, None,
     "Expected one input Tensor. Classify needs a signature with a single serialized "
     "tf.Example input; 'retrieve' has ['k', 'query']"),
    # A signature is named: only decoding can tell which, but none of the servable's could run.
    ({"serving_default": RETRIEVAL_SIG, "other": RETRIEVAL_SIG}, "other",
     "m version 1 has no signature that Classify can run"),
    # One signature could run, but not serving_default, the one asked for.
    ({"serving_default": RETRIEVAL_SIG, "classify_x": CLASSIFY_SIG}, None,
     "'retrieve' has ['k', 'query']"),
], ids=["default", "named, none can", "default cannot"])
def test_classify_signature_is_checked_before_the_body_is_decoded(monkeypatch, sigs, named,
                                                                  fragment):
    """2M examples (6 MB) for a servable that cannot classify them: 400 at once, the body never
    decoded (before: all of it was parsed, 11-22 s and +201 MiB for 16 MB, then refused)."""
    core = _FakeCore(sigs=sigs)
    decoded = []
    real_parse = rest_json.parse_body
    monkeypatch.setattr(rest_json, "parse_body",
                        lambda *a, **k: (decoded.append(1), real_parse(*a, **k))[1])
    gw = rest.RestGateway(core, "127.0.0.1", 0, 5.0)
    gw.start()
    try:
        head = b'{"signature_name": "%s", ' % named.encode() if named else b"{"
        body = head + b'"examples": [' + b",".join([b"{}"] * 2_000_000) + b"]}"
        status, answer = st.send_http("127.0.0.1", gw.port, "POST", "/v1/models/m:classify",
                                      {}, body, timeout=120)
    finally:
        gw.stop(1.0)
    assert status == 400 and fragment in json.loads(answer)["error"], answer[:300]
    assert not decoded and core.classified == 0


def test_a_body_that_may_name_a_signature_is_decoded_to_find_it():
    assert rest_json.signature_name_unparsed(b'{"examples": [{"x": 1}]}') == ""
    assert rest_json.signature_name_unparsed(b'{"signature_name": "a", "examples": []}') is None
    # "signature\u005fname" is "signature_name" once decoded.
    assert rest_json.signature_name_unparsed(b'{"signature\\u005fname": "a"}') is None


def test_predict_rows_and_values_are_checked_before_conversion(server):
    """Over --max_request_rows (set here) or --max_input_elements, a REST predict is refused
    from the JSON's shape, before its strings are converted; "instances" while it is decoded,
    at the first row over the limit (rest_json.parse_predict_body)."""
    status, answer = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {},
                                  json.dumps({"instances": ["q"] * (MAX_ROWS + 1)}).encode())
    assert status == 400 and b"more than 1000 rows" in answer, answer
    assert b"the limit is 1000 (--max_request_rows)" in answer, answer
    status, answer = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {},
                                  json.dumps({"inputs": {"query": [[0] * 7000] * 600}},
                                             separators=(",", ":")).encode())
    # 4.2M values, over the default of 1,048,576 (8.4 MB: under the 16 MiB body limit)
    assert status == 400 and b"--max_input_elements" in answer, answer


# ----------------------------------------------------------------------------- disconnects

def _reset_close(sock):
    """Close with an RST (SO_LINGER 0): the server's next read or write fails at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_clients_that_vanish_leave_no_traceback(server):
    """Clients that disconnect mid-body, mid-chunked-body or before their answer is written
    are routine: no traceback in the server's log, and it keeps serving."""
    big = _query_body(["apple iphone 15 pro"] * 32, k=300)  # a large answer to write
    with ThreadPoolExecutor(8) as pool:  # start the server's run threads (they stay)
        list(pool.map(lambda _: st.send_http("127.0.0.1", server.rest_api_port, "POST",
                                             PREDICT, {}, big), range(16)))
    threads_before = _threads(server.proc.pid)
    for i in range(6):
        for kind in ("mid-body", "mid-chunked", "mid-answer"):
            sock = _connect(server)
            if kind == "mid-body":
                sock.sendall(_request("POST", PREDICT, big)[:-100])
            elif kind == "mid-chunked":
                sock.sendall(_chunked(PREDICT, [big])[:-20])
            else:
                sock.sendall(_request("POST", PREDICT, big))
            if i % 2:
                _reset_close(sock)
            else:
                sock.close()
    status, answer = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {},
                                  _query_body(["cordless drill"], k=4))
    assert status == 200 and len(_item_ids(answer)[0]) == 4
    # Each connection has its thread until its (failed) answer is handled: wait for them.
    deadline = time.monotonic() + 60
    while _threads(server.proc.pid) > threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log_tail(5000)
    assert "Traceback" not in log, log[-4000:]


# ----------------------------------------------------------------------------- memory

# Measured on 4 x 16 MiB bodies of tiny strings: 2,106 MiB before the budget, 391 MiB with it
# (one such body parsed at a time: Python's json makes ~3.3M string objects of it).
RSS_GROWTH_BOUND = 600 << 20


def test_concurrent_max_size_bodies_are_bounded(server):
    """Four clients send 16 MiB bodies of ~2.8M tiny strings at once (before: the server grew
    to 1.9 GB). Bodies over 64 KiB share a budget of --rest_api_max_inflight_body_bytes (by
    default one max-size body), so they are parsed one after another: each still gets its
    answer (400: more rows than --max_request_rows, judged before conversion), and the server's peak RSS growth stays
    under RSS_GROWTH_BOUND, about what one such body costs."""
    strings = (16 << 20) // 5 - 10  # '"ab",' is 5 bytes
    body = b'{"instances": [' + b",".join([b'"ab"'] * strings) + b"]}"
    assert (15 << 20) < len(body) <= (16 << 20)
    results = [None] * 4

    def send(i):
        results[i] = st.send_http("127.0.0.1", server.rest_api_port, "POST", PREDICT, {}, body,
                                  timeout=REST_TIMEOUT_MS / 1000 + 30)

    def send_all():
        senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()

    growth, _ = st.peak_rss_growth(server.proc.pid, send_all)
    for status, answer in results:
        assert status == 400 and b"--max_request_rows" in answer, answer[:300]
    assert growth < RSS_GROWTH_BOUND, f"peak RSS growth {growth >> 20} MiB"


# ----------------------------------------------------------------------------- body budget

def test_body_budget_counts():
    """Small bodies never wait; one body alone always fits, even past the limit; a second
    large body waits for the first (here: no wait, so refused and counted)."""
    budget = http_body.BodyBudget(limit_bytes=1000, exempt_bytes=100)
    assert budget.acquire(100, 0, 0)                # exempt: not counted
    assert budget.acquire(5000, 0, 0)               # alone: fits although > limit
    assert not budget.acquire(200, 0, 0) and budget.refused == 1
    budget.release(5000)
    assert budget.acquire(600, 0, 0) and budget.acquire(300, 0, 0)   # 900 <= 1000
    assert not budget.acquire(200, 0, 0) and budget.refused == 2
    # A chunked body holding 600 grows by 500: not while another holds 300; alone, it may.
    assert not budget.acquire(500, 600, 0) and budget.refused == 3
    budget.release(300)
    assert budget.acquire(500, 600, 0) and budget.peak_held == 5000


def test_a_large_body_without_budget_in_time_is_503_and_closed():
    """While the budget is held, a body over 64 KiB waits up to the REST timeout (0.2 s
    here), then gets 503 unread and its connection is closed; small bodies are served."""
    gw = rest.RestGateway(_FakeCore(), "127.0.0.1", 0, 0.2, metrics_path="/metrics",
                          max_body_bytes=1 << 20)
    gw.start()
    try:
        assert gw.body_budget.acquire(1 << 20, 0, 0)  # a body being parsed elsewhere
        status, _ = st.send_http("127.0.0.1", gw.port, "POST", "/v1/models/m:predict", {},
                                 b"{" * 100)
        assert status == 400  # small: not held back
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            sock.sendall(_request("POST", "/v1/models/m:predict", b" " * (100 << 10)))
            status, headers, answer = _read_answer(reader)
            assert status == 503 and b"--rest_api_max_inflight_body_bytes" in answer
            assert headers["connection"] == "close" and reader.read() == b""
        assert gw.body_budget.refused == 1
        gw.body_budget.release(1 << 20)
        status, _ = st.send_http("127.0.0.1", gw.port, "POST", "/v1/models/m:predict", {},
                                 b" " * (100 << 10))
        assert status == 400  # read and parsed (empty document)
    finally:
        gw.stop(1.0)
