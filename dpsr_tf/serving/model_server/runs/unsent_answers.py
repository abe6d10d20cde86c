"""A budget for answers computed but not yet sent: a client that stops reading cannot make
the server compute and hold unbounded answers.

HTTP/2 flow control lets a client open streams with a zero window and never read: every answer
it asks for would be computed and then wait in the server until the call ends. Each gRPC
call's answer counts here from when its handler has it until the call's done-callback (status
sent, or the call cancelled / the connection closed). A client (one gRPC connection) is held
back while it holds its budget or more: its queued requests wait in the run queue
(run_queue.py) while other clients' run, so at most its budget plus one answer per run thread
is computed ahead of its reading. Many connections could together hold more than the server
should: while all clients together hold the total budget, a client that holds more than
READING_ALLOWANCE_BYTES is held back too, its new calls are refused RESOURCE_EXHAUSTED, and an
answer that becomes ready for it is dropped rather than held. A client that reads its answers
holds only the few on their way (a 10-item answer is about 1 KB) and is served as usual, so
clients that do not read cannot get the ones that do refused.

A new connection holds nothing, so the rules above would hold its first answer whatever its
size: a thousand connections that each ask one large answer and never read would hold them
all. So the first answers of connections none of whose answers has been read yet (they have
not shown that they read) count apart too; while both they and all answers are over the total
budget, such a connection has only a first answer of up to FIRST_ANSWER_ALLOWANCE_BYTES held,
a larger one is refused. A new client that reads still gets its large first answer while a
few connections hoard (their later answers do not count as first ones). Which connections have
had an answer read is remembered for the READERS_REMEMBERED most recent. The total then stays
within about twice its budget, plus the reading allowance per reading client and the
first-answer allowance per other connection.

The clients of a proxy share its connection: each is counted apart for the refusals (the one
whose answers the proxy has not passed on is refused, not its neighbours), and with the
connection for holding back (naming sub-clients does not raise a connection's budget).
"""
import collections

import grpc

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.runs.run_queue import WAIT

# Over the total budget, what a client may still hold and be served: answers on their way.
READING_ALLOWANCE_BYTES = 64 << 10
# Over the total budget, the largest answer held for a connection none of whose answers has
# been read yet (a 10-item answer is about 1 KB).
FIRST_ANSWER_ALLOWANCE_BYTES = 16 << 10
READERS_REMEMBERED = 65536


class UnsentAnswers:
    """Counts unsent answer bytes per client and in all (changed on the event loop only).

    Args:
      per_client_bytes: budget of one client (0: none).
      total_bytes: budget of all clients together (0: none).
      metrics: ServerMetrics or None (gauge of the held bytes, counter of refusals).
      on_release: optional callback() when a held-back client may go on.
    """

    def __init__(self, per_client_bytes: int, total_bytes: int, metrics=None,
                 on_release=None):
        self._per_client = per_client_bytes
        self._total_budget = total_bytes
        self._metrics = metrics
        self.on_release = on_release
        self._by_client = {}
        self._readers = collections.OrderedDict()  # connections with an answer read: None
        self.total = 0
        self.first_answers = 0  # bytes of first answers of connections not known to read

    def held(self, client) -> int:
        """Unsent answer bytes of `client`."""
        return self._by_client.get(client, 0)

    def _over_total(self) -> bool:
        return bool(self._total_budget) and self.total >= self._total_budget

    def _hoarding(self, held: int) -> bool:
        """All clients hold the total budget and `held` is over the reading allowance."""
        return held > READING_ALLOWANCE_BYTES and self._over_total()

    def held_back(self, client) -> bool:
        """True while `client`'s queued requests must wait (safe from any thread)."""
        held = self._by_client.get(client, 0)
        if self._per_client and held >= self._per_client:
            return True
        return self._hoarding(held)

    def gate(self, client):
        """For the run queue (any thread): run_queue.WAIT while `client` is held back. A
        client that a proxy forwards, (connection, name), is held back with its connection:
        the budget is the reader's, and naming sub-clients does not escape it."""
        return WAIT if self.held_back(_keys(client)[-1]) else None

    def refusal(self, client, nbytes: int = 0):
        """A RESOURCE_EXHAUSTED ServingError for a new call or a ready answer (of `nbytes`)
        of `client` while all clients are over the total budget and `client` holds more than
        the reading allowance, or the answer is larger than FIRST_ANSWER_ALLOWANCE_BYTES and
        none of its connection's answers has been read yet; else None."""
        if not self._over_total():
            return None
        held = self._by_client.get(client, 0)
        if self._hoarding(held):
            message = (f"this one {held}; read the answers of earlier calls first")
        elif (nbytes > FIRST_ANSWER_ALLOWANCE_BYTES and self._first(_keys(client)[-1])
              and self.first_answers >= self._total_budget):
            message = (f"this connection has read none of its answers yet, and this answer "
                       f"has {nbytes} bytes (at most {FIRST_ANSWER_ALLOWANCE_BYTES} while the "
                       "server is over its limit); retry, or read a small answer first")
        else:
            return None
        if self._metrics is not None:
            self._metrics.calls_refused.labels("total").inc()
        return ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"clients hold {self.total} bytes of answers they have not read (the limit is "
            f"{self._total_budget}, --max_unsent_response_bytes), {message}")

    def hold(self, context, client, nbytes: int) -> None:
        """Counts `nbytes` of `client` until the call of `context` is done. A client that
        a proxy forwards, (connection, name), counts for itself (refusals) and for its
        connection (held back with it)."""
        first = nbytes if self._first(_keys(client)[-1]) else 0
        self.first_answers += first
        for key in _keys(client):
            self._by_client[key] = self._by_client.get(key, 0) + nbytes
        self.total += nbytes
        self._gauge()
        context.add_done_callback(lambda call: self._release(client, nbytes, call, first))

    def _first(self, connection) -> bool:
        """An answer for `connection` now would be its first (it holds none, none read)."""
        return connection not in self._readers and not self._by_client.get(connection)

    def _release(self, client, nbytes: int, call=None, first: int = 0) -> None:
        connection = _keys(client)[-1]
        self.first_answers -= first
        if call is not None and not call.cancelled():  # its answer was read
            self._readers[connection] = None
            self._readers.move_to_end(connection)
            if len(self._readers) > READERS_REMEMBERED:
                self._readers.popitem(last=False)
        was_held_back = self.held_back(connection) or self._over_total()
        for key in _keys(client):
            left = self._by_client[key] - nbytes
            if left:
                self._by_client[key] = left
            else:
                del self._by_client[key]
        self.total -= nbytes
        self._gauge()
        if was_held_back and self.on_release is not None:
            self.on_release()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.unsent_response_bytes.set(self.total)


def _keys(client) -> tuple:
    """The keys a client's answers count under: itself, and for a client a proxy forwards,
    (connection, name), its connection too (the last key is always the connection)."""
    return (client, client[0]) if isinstance(client, tuple) else (client,)
