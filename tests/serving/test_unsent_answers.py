"""UnsentAnswers: the per-client budget holds back the client over it; over the total budget,
only clients holding more than the reading allowance are held back and refused, so a client
that reads its answers (a few bytes on their way) is never refused because others do not
read."""
import grpc

from dpsr_tf.serving.model_server.runs.run_queue import WAIT
from dpsr_tf.serving.model_server.runs.unsent_answers import (FIRST_ANSWER_ALLOWANCE_BYTES,
                                                              READERS_REMEMBERED,
                                                              READING_ALLOWANCE_BYTES,
                                                              UnsentAnswers)

MB = 1 << 20


class _Call:
    """A gRPC call context whose done-callbacks the test fires (the answer was read, or the
    call cancelled)."""

    def __init__(self, cancelled=False):
        self.callbacks = []
        self._cancelled = cancelled

    def cancelled(self):
        return self._cancelled

    def add_done_callback(self, fn):
        self.callbacks.append(fn)

    def done(self):
        for fn in self.callbacks:
            fn(self)


def test_a_client_over_its_own_budget_waits_until_its_answers_are_read():
    released = []
    unsent = UnsentAnswers(per_client_bytes=100, total_bytes=0,
                           on_release=lambda: released.append(1))
    call = _Call()
    unsent.hold(call, "slow", 60)
    assert unsent.gate("slow") is None
    unsent.hold(_Call(), "slow", 40)
    assert unsent.held("slow") == 100 and unsent.gate("slow") == WAIT
    assert unsent.refusal("slow") is None  # no total budget: it waits, it is not refused
    call.done()
    assert unsent.held("slow") == 40 and unsent.gate("slow") is None and released == [1]


def test_over_the_total_only_clients_holding_more_than_the_allowance_are_held_back():
    unsent = UnsentAnswers(per_client_bytes=0, total_bytes=10 * MB)
    reader_call = _Call()
    unsent.hold(reader_call, "reader", READING_ALLOWANCE_BYTES)  # answers on their way
    for name in ("slow_a", "slow_b", "slow_c"):
        unsent.hold(_Call(), name, 3 * MB + MB // 2)
    assert unsent.total >= 10 * MB
    for name in ("slow_a", "slow_b", "slow_c"):
        assert unsent.gate(name) == WAIT
        error = unsent.refusal(name)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max_unsent_response_bytes" in error.message
        assert str(3 * MB + MB // 2) in error.message
    assert unsent.gate("reader") is None and unsent.refusal("reader") is None
    assert unsent.gate("new") is None and unsent.refusal("new") is None  # holds nothing
    unsent.hold(reader_call, "reader", 1)  # one byte over the allowance: held back too
    assert unsent.gate("reader") == WAIT and unsent.refusal("reader") is not None
    reader_call.done()  # 10.5 MiB left: still over; the slow ones stay held back
    assert unsent.gate("slow_a") == WAIT and unsent.gate("reader") is None


def test_under_the_total_nobody_is_held_back_by_it():
    unsent = UnsentAnswers(per_client_bytes=0, total_bytes=10 * MB)
    calls = [_Call() for _ in range(3)]
    for call, name in zip(calls, ("a", "b", "c")):
        unsent.hold(call, name, 4 * MB)
    assert unsent.gate("a") == WAIT
    calls[0].done()  # 8 MiB left of a 10 MiB budget
    assert unsent.total == 8 * MB
    assert all(unsent.gate(n) is None and unsent.refusal(n) is None for n in ("a", "b", "c"))


def test_a_client_named_by_a_proxy_is_held_back_with_its_connection():
    # The run queue keys a forwarded client as (connection, name); the budget is the
    # connection's, so naming sub-clients (dpsr-client metadata) does not escape it.
    unsent = UnsentAnswers(per_client_bytes=100, total_bytes=0)
    unsent.hold(_Call(), "conn", 100)
    assert unsent.gate(("conn", "a")) == WAIT and unsent.gate(("conn", "b")) == WAIT
    assert unsent.gate(("other", "a")) is None


def test_over_the_total_a_proxys_clients_are_refused_apart():
    # A proxy's connection carries a flood whose answers the proxy has not passed on and a
    # normal client's few bytes: over the total budget only the flood's named client is
    # refused; both wait while the connection is over its own budget.
    unsent = UnsentAnswers(per_client_bytes=8 * MB, total_bytes=4 * MB)
    flood_call = _Call()
    unsent.hold(flood_call, ("proxy", "flood"), 5 * MB)
    unsent.hold(_Call(), ("proxy", "normal"), 1000)
    assert unsent.refusal(("proxy", "flood")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert unsent.refusal(("proxy", "normal")) is None
    assert unsent.held("proxy") == 5 * MB + 1000
    assert unsent.gate(("proxy", "normal")) == WAIT  # its connection is over the total
    flood_call.done()
    assert unsent.held("proxy") == 1000 and unsent.held(("proxy", "flood")) == 0
    assert unsent.gate(("proxy", "normal")) is None and unsent.total == 1000


def test_over_the_total_many_connections_that_never_read_hold_a_bounded_total():
    # Before: each new connection held nothing, so its first answer was always held: 1,000
    # connections of one unread 290 KB answer each held 290 MB (+281-369 MiB of RSS). Now,
    # while first answers of connections not known to read are over the total budget too,
    # such a connection may have only a small first answer held; a larger one is refused.
    answer = 290_000
    unsent = UnsentAnswers(per_client_bytes=4 * MB, total_bytes=8 * MB)
    refused = 0
    for i in range(1000):
        if unsent.refusal(f"idle{i}", answer) is None:
            unsent.hold(_Call(), f"idle{i}", answer)
        else:
            refused += 1
    # 28 answers hold 8,120,000 bytes, under 8 MiB (8,388,608); the 29th passes it
    # (8,410,000), and every later one is refused
    assert unsent.total == unsent.first_answers == 29 * answer and refused == 971
    small = FIRST_ANSWER_ALLOWANCE_BYTES
    assert unsent.refusal("new", small) is None  # a small first answer (10 items: ~1 KB)
    error = unsent.refusal("new", small + 1)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "read none of its answers" in error.message
    # A client with an answer read before is served as usual, large answers too.
    reader_call = _Call()
    unsent.hold(reader_call, "reader", 1000)
    reader_call.done()
    assert unsent.refusal("reader", answer) is None
    # A connection that went away without reading (cancelled) has shown nothing.
    gone = _Call(cancelled=True)
    unsent.hold(gone, "gone", 1000)
    gone.done()
    assert unsent.refusal("gone", answer) is not None
    assert unsent.first_answers == 29 * answer


def test_a_new_reader_gets_its_large_first_answer_while_a_few_connections_hoard():
    # Slow readers of many calls each hold the total budget, but few first answers: a new
    # client's first answer is held (it then reads, and is a reader).
    unsent = UnsentAnswers(per_client_bytes=4 * MB, total_bytes=8 * MB)
    for i in range(3):
        for _ in range(10):
            unsent.hold(_Call(), f"slow{i}", 300_000)
    assert unsent.total == 9_000_000 and unsent.first_answers == 900_000
    assert unsent.refusal("slow0", 300_000) is not None  # hoarding
    assert unsent.refusal("new", 4 * MB) is None
def test_what_connections_have_read_is_remembered_for_a_bounded_number():
    unsent = UnsentAnswers(per_client_bytes=0, total_bytes=1)
    for i in range(READERS_REMEMBERED + 10):
        call = _Call()
        unsent.hold(call, f"reader{i}", 1)
        call.done()
    unsent.hold(_Call(), "slow", 10)  # over the total
    assert unsent.refusal("reader0", 1 << 20) is not None  # forgotten: the oldest
    assert unsent.refusal(f"reader{READERS_REMEMBERED + 9}", 1 << 20) is None
