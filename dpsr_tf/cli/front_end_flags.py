"""Flags of the native gRPC front end (serving/front_end.py), shared by `dpsr serve` and
`dpsr proxy`."""
from typing import Optional

from absl import flags
from absl import logging

from dpsr_tf.serving import front_end
from dpsr_tf.serving.front_end import FrontEndOptions

FRONT_END = flags.DEFINE_enum(
    "front_end", "auto", ["auto", "native", "python"], "[dpsr] What takes gRPC calls on "
    "--port: `native`, the C++ front end (docs/serving.md, \"The native front end\"), which "
    "queues calls per client connection and passes them on in turns, so a burst of calls from "
    "one client costs the Python event loop nothing until their turn and calls cancelled or "
    "expired while waiting never reach it; `python`, the server's own grpc.aio server; `auto`: "
    "native unless the port serves TLS (--ssl_config_file) or the front end is not built, "
    "then python, with a log line saying why.")
_WITH_NATIVE = "[dpsr] With the native front end (--front_end):"
MAX_RUNNING = flags.DEFINE_integer(
    "front_end_max_running", FrontEndOptions.max_running,
    f"{_WITH_NATIVE} calls passed to the server at once, all clients together (0: 16 per "
    "usable core).", lower_bound=0)
MAX_RUNNING_PER_CLIENT = flags.DEFINE_integer(
    "front_end_max_running_per_client", FrontEndOptions.max_running_per_client,
    f"{_WITH_NATIVE} of those, from one client (0: 2 per usable core).", lower_bound=0)
INITIAL_RUNNING_PER_CLIENT = flags.DEFINE_integer(
    "front_end_initial_running_per_client", FrontEndOptions.initial_running_per_client,
    f"{_WITH_NATIVE} slow start: a client's share begins at this many calls and grows by one "
    "per answer delivered to it (0: the whole share at once).", lower_bound=0)
MAX_QUEUED_PER_CLIENT = flags.DEFINE_integer(
    "front_end_max_queued_per_client", FrontEndOptions.max_queued_per_client,
    f"{_WITH_NATIVE} calls one connection may have waiting; more get RESOURCE_EXHAUSTED.",
    lower_bound=1)
MAX_QUEUED = flags.DEFINE_integer(
    "front_end_max_queued", FrontEndOptions.max_queued,
    f"{_WITH_NATIVE} calls waiting in all; more get RESOURCE_EXHAUSTED.", lower_bound=1)
LIFO_AFTER_MS = flags.DEFINE_integer(
    "front_end_lifo_after_ms", FrontEndOptions.lifo_after_ms,
    f"{_WITH_NATIVE} once a connection's oldest waiting call has waited this many ms, its "
    "newest waiting call goes next (adaptive LIFO). 0, the default: arrival order always "
    "(the queue delay control keeps queues short; docs/serving.md, \"Overload\").",
    lower_bound=0)
QUEUE_TARGET_MS = flags.DEFINE_integer(
    "front_end_queue_target_ms", FrontEndOptions.queue_target_ms,
    "[dpsr] Queue delay target, of the native front end's per-connection queues (and of the "
    "run queue with --front_end=python): once a connection's oldest waiting call has waited "
    "more than this (or the measured service time, if longer) for a whole "
    "--front_end_queue_interval_ms, its new calls are refused at once with "
    "RESOURCE_EXHAUSTED until its queue is below the target again, so past capacity the "
    "excess is refused in microseconds and the calls served are served fast. 0: off (calls "
    "wait until their deadline).", lower_bound=0)
QUEUE_INTERVAL_MS = flags.DEFINE_integer(
    "front_end_queue_interval_ms", FrontEndOptions.queue_interval_ms,
    "[dpsr] How long a queue must stay above --front_end_queue_target_ms before "
    "calls are refused (a burst shorter than this only queues); a connection refused within "
    "the last 16 intervals is refused again as soon as its queue is above the target.",
    lower_bound=1)
MAX_UNREAD = flags.DEFINE_integer(
    "front_end_max_unread_bytes_per_client", FrontEndOptions.max_unread_bytes_per_client,
    f"{_WITH_NATIVE} answer bytes one connection has not read (HTTP/2 flow control); past "
    "it, its further answers are dropped with RESOURCE_EXHAUSTED instead of held.",
    lower_bound=1)
MAX_REQUEST_BYTES_PER_CLIENT = flags.DEFINE_integer(
    "front_end_max_request_bytes_per_client", FrontEndOptions.max_request_bytes_per_client,
    f"{_WITH_NATIVE} bytes of requests one connection may have read and not yet answered "
    "(waiting, running, or their answer being written); a call that would pass it is refused "
    "at once with RESOURCE_EXHAUSTED (a connection holding none may always send one call), and "
    "once a connection holds it all, its new calls are refused before they are read. 0: "
    "--max_receive_message_bytes (one largest message).", lower_bound=0)
MAX_REQUEST_BYTES = flags.DEFINE_integer(
    "front_end_max_request_bytes", FrontEndOptions.max_request_bytes,
    f"{_WITH_NATIVE} the same, all connections together; past it only calls under 64 KiB pass "
    "(up to 64 KiB per connection), so small calls still run while large ones are refused. "
    "0: twice --max_receive_message_bytes.", lower_bound=0)
FRAMED_PREDICT = flags.DEFINE_bool(
    "front_end_framed_predict", True, f"{_WITH_NATIVE} Predict calls reach the server (or the "
    "proxy) as frames on a private UNIX socket instead of as gRPC calls on its event loop "
    "(docs/serving.md, \"The framed Predict hop\"); other methods still come over gRPC. "
    "--nofront_end_framed_predict: Predict over gRPC too.")
FRAMED_MAX_REQUEST_BYTES = flags.DEFINE_integer(
    "front_end_framed_max_request_bytes", FrontEndOptions.framed_max_request_bytes,
    f"{_WITH_NATIVE} a Predict request of this many bytes or more goes to the server over "
    "gRPC, not the framed hop, which the server reads one request at a time: a large one "
    "there held every later call behind its read and parse (8 connections sending 4 MiB "
    "calls at once: other clients' p99 343-494 ms framed, 73-88 ms over gRPC). 0: every "
    "Predict framed.", lower_bound=0)


def front_end_options(ssl, hold_back_unread_bytes: int = FrontEndOptions.hold_back_unread_bytes,
                      hold_back_total_unread_bytes: int =
                      FrontEndOptions.hold_back_total_unread_bytes,
                      max_string_input_bytes: int = 0) -> Optional[FrontEndOptions]:
    """FrontEndOptions when the native front end takes the port, or None for Python's own
    gRPC server (--front_end=python, or auto where native cannot serve). The hold-back budgets
    and the string limit are the Python side's own flags (FrontEndOptions).

    Raises:
      ValueError: --front_end=native with TLS on the client port (`ssl` set), or
        --front_end_framed_predict given where the Python gRPC server takes the port.
    """
    options = _native_options(ssl, hold_back_unread_bytes, hold_back_total_unread_bytes,
                              max_string_input_bytes)
    asked_framed = FRAMED_PREDICT.value and flags.FLAGS[FRAMED_PREDICT.name].present
    if options is None and asked_framed:
        raise ValueError("--front_end_framed_predict needs the native front end (--front_end="
                         "native or auto, without TLS on the port)")
    return options


def _native_options(ssl, hold_back_unread_bytes: int, hold_back_total_unread_bytes: int,
                    max_string_input_bytes: int) -> Optional[FrontEndOptions]:
    if FRONT_END.value == "python":
        return None
    if ssl is not None:
        if FRONT_END.value == "native":
            raise ValueError("--front_end=native does not serve TLS (--ssl_config_file); use "
                             "--front_end=python, or terminate TLS in front of the server")
        logging.info("--front_end=auto: the Python gRPC server takes --port: the native front "
                     "end does not serve TLS (--ssl_config_file)")
        return None
    if FRONT_END.value == "auto" and not front_end.is_built():
        logging.warning("--front_end=auto: the Python gRPC server takes --port: the native "
                        "front end %s is not built (`make build`; it needs libgrpc++-dev)",
                        front_end.BINARY)
        return None
    return FrontEndOptions(
        max_running=MAX_RUNNING.value, max_running_per_client=MAX_RUNNING_PER_CLIENT.value,
        initial_running_per_client=INITIAL_RUNNING_PER_CLIENT.value,
        max_queued_per_client=MAX_QUEUED_PER_CLIENT.value, max_queued=MAX_QUEUED.value,
        lifo_after_ms=LIFO_AFTER_MS.value, queue_target_ms=QUEUE_TARGET_MS.value,
        queue_interval_ms=QUEUE_INTERVAL_MS.value,
        max_unread_bytes_per_client=MAX_UNREAD.value,
        max_request_bytes_per_client=MAX_REQUEST_BYTES_PER_CLIENT.value,
        max_request_bytes=MAX_REQUEST_BYTES.value,
        framed_max_request_bytes=FRAMED_MAX_REQUEST_BYTES.value,
        max_string_input_bytes=max_string_input_bytes,
        hold_back_unread_bytes=hold_back_unread_bytes,
        hold_back_total_unread_bytes=hold_back_total_unread_bytes,
        framed_predict=FRAMED_PREDICT.value)
