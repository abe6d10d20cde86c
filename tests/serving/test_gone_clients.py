"""Clients gone before their answer was sent (`dpsr serve` and `dpsr proxy`): grpc.aio's ERROR
record with a traceback, and the same error reaching the event loop's exception handler, each
become one line without a traceback, counted; every other record and loop error keeps its
level and traceback. The end-to-end case (clients whose 2 ms deadline passes while the answer
is sent; no traceback in the server's log) is
test_hostile_inputs.test_client_disconnects_leave_no_traceback."""
import asyncio
import logging

from grpc._cython import cygrpc

from dpsr_tf.serving import gone_clients

GRPC_LOG = logging.getLogger(gone_clients.GRPC_LOGGER)
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _gone_client_error():
    try:  # raised, as the core's execute_batch does, so that it carries a traceback
        raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    except cygrpc.ExecuteBatchError as e:
        return e


def _real_error():
    try:
        raise ValueError("a bug in a handler")
    except ValueError as e:
        return e


def _log_as_grpc_does(error):
    """What grpc.aio's _handle_exceptions does with an error of a servicer call."""
    try:
        raise error
    except Exception:  # pylint: disable=broad-except
        GRPC_LOG.exception("%s raised in core by servicer method [%s]",
                           type(error).__name__, PREDICT)


def _records(caplog, level=logging.DEBUG):
    """The records at `level` or above, less asyncio's own debug chatter ("Using selector")."""
    return [r for r in caplog.records
            if r.levelno >= level and not (r.name == "asyncio" and r.levelno < logging.INFO)]


def test_grpc_record_of_a_gone_client_is_one_line_and_a_real_error_keeps_its_traceback(caplog):
    caplog.set_level(logging.DEBUG)
    loop = asyncio.new_event_loop()
    gone = gone_clients.install(loop)
    try:
        _log_as_grpc_does(_gone_client_error())
        _log_as_grpc_does(_real_error())
    finally:
        gone_clients.uninstall(loop, gone)
        loop.close()
    records = _records(caplog)
    assert [(r.name, r.levelname, r.exc_info is None) for r in records] == [
        ("serving.gone_clients", "INFO", True), (gone_clients.GRPC_LOGGER, "ERROR", False)]
    assert PREDICT in records[0].getMessage() and "1 so far" in records[0].getMessage()
    assert caplog.text.count("Traceback") == 1 and "a bug in a handler" in caplog.text
    assert gone.count == 1


def test_many_gone_clients_log_at_info_only_at_powers_of_ten(caplog):
    caplog.set_level(logging.DEBUG)
    loop = asyncio.new_event_loop()
    gone = gone_clients.install(loop)
    try:
        for _ in range(120):
            _log_as_grpc_does(_gone_client_error())
    finally:
        gone_clients.uninstall(loop, gone)
        loop.close()
    info = [r.getMessage() for r in _records(caplog, logging.INFO)]
    assert len(info) == 3 and len(_records(caplog)) == 120, info
    assert all(f"{n} so far" in m for m, n in zip(info, (1, 10, 100))), info
    assert gone.count == 120 and "Traceback" not in caplog.text


def test_uninstalled_the_grpc_record_is_left_alone(caplog):
    """The filter is what changes grpc's record (this test fails without it)."""
    caplog.set_level(logging.DEBUG)
    _log_as_grpc_does(_gone_client_error())
    assert [r.levelname for r in _records(caplog)] == ["ERROR"] and "Traceback" in caplog.text


def test_loop_exception_handler_quiets_a_gone_client_and_passes_real_errors_on(caplog):
    """What asyncio itself reports (a callback that raised) reaches the installed handler:
    the gone client as one line, the bug with its traceback from asyncio's default handler."""
    caplog.set_level(logging.DEBUG)

    def raise_(error):
        raise error

    async def main():
        loop = asyncio.get_running_loop()
        gone = gone_clients.install(loop)
        try:
            loop.call_soon(raise_, _gone_client_error())
            loop.call_soon(raise_, _real_error())
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            gone_clients.uninstall(loop, gone)
        return gone

    gone = asyncio.run(main())
    assert (gone.count, gone.other_loop_errors) == (1, 1)
    errors = _records(caplog, logging.ERROR)
    assert [r.name for r in errors] == ["asyncio"] and errors[0].exc_info is not None
    assert caplog.text.count("Traceback") == 1 and "a bug in a handler" in caplog.text
