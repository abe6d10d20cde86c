"""A budget for answers computed but not yet sent: a client that stops reading cannot make
the server hold unbounded memory.

HTTP/2 flow control lets a client open streams with a zero window and never read: every answer
it asks for is computed and then waits in the server until the call ends. Each gRPC call's
answer counts here from when its handler has it until the call's done-callback (status sent,
or the call cancelled / the connection closed). A new call is refused RESOURCE_EXHAUSTED while
its client, or all clients together, hold more than their budget, and so is an answer that
becomes ready while its client is over budget (it is dropped, not held). So unsent answers
never exceed the total budget plus one answer.

A client is one gRPC connection (its peer address); `grpc.max_concurrent_streams` (a gRPC
server argument) bounds the calls of one connection.
"""
import grpc

from dpsr_tf.serving.errors import ServingError


class UnsentAnswers:
    """Counts unsent answer bytes per client and in all (event-loop thread only).

    Args:
      per_client_bytes: budget of one client (0: none).
      total_bytes: budget of all clients together (0: none).
      metrics: ServerMetrics or None (gauge of the held bytes, counter of refusals).
    """

    def __init__(self, per_client_bytes: int, total_bytes: int, metrics=None):
        self._per_client = per_client_bytes
        self._total_budget = total_bytes
        self._metrics = metrics
        self._by_client = {}
        self.total = 0

    def held(self, client) -> int:
        """Unsent answer bytes of `client`."""
        return self._by_client.get(client, 0)

    def refusal(self, client):
        """A RESOURCE_EXHAUSTED ServingError when `client` or all clients are over budget,
        else None."""
        if self._per_client and self._by_client.get(client, 0) >= self._per_client:
            return self._refuse("client", f"this client has {self._by_client[client]} bytes of "
                                f"answers it has not read (the limit is {self._per_client}, "
                                "--max_unsent_response_bytes_per_client); read the answers "
                                "of earlier calls before sending more")
        if self._total_budget and self.total >= self._total_budget:
            return self._refuse("total", f"clients hold {self.total} bytes of answers they have "
                                f"not read (the limit is {self._total_budget}, "
                                "--max_unsent_response_bytes); retry later")
        return None

    def hold(self, context, client, nbytes: int) -> None:
        """Counts `nbytes` of `client` until the call of `context` is done."""
        self._by_client[client] = self._by_client.get(client, 0) + nbytes
        self.total += nbytes
        self._gauge()
        context.add_done_callback(lambda _: self._release(client, nbytes))

    def _release(self, client, nbytes: int) -> None:
        left = self._by_client[client] - nbytes
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]
        self.total -= nbytes
        self._gauge()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.unsent_response_bytes.set(self.total)

    def _refuse(self, reason: str, message: str) -> ServingError:
        if self._metrics is not None:
            self._metrics.calls_refused.labels(reason).inc()
        return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
