"""Per-client fairness in the proxy: a cap on the calls one client connection has in flight.

A client that opens thousands of concurrent calls on one channel would otherwise fill the
proxy's event loop and the model servers' queues ahead of everyone else. Beyond the cap, a call
is answered RESOURCE_EXHAUSTED at once (gRPC clients treat it as "back off and retry"), before
any backend work, so the other clients' calls keep their latency.
"""
import collections

import grpc

from dpsr_tf.serving.errors import ServingError


class PeerLimiter:
    """Counts in-flight calls per peer (gRPC's `context.peer()`: one client connection, e.g.
    "ipv4:10.0.0.5:53124") and refuses calls beyond `max_per_peer` (0: no limit)."""

    def __init__(self, max_per_peer: int):
        if max_per_peer < 0:
            raise ValueError(f"max_per_peer is {max_per_peer}; it must be >= 0 (0: no limit)")
        self.max_per_peer = max_per_peer
        self._in_flight = collections.Counter()

    def acquire(self, peer: str) -> None:
        """Counts a call of `peer`; release(peer) when it ends.

        Raises:
          ServingError(RESOURCE_EXHAUSTED): `peer` already has max_per_peer calls in flight.
        """
        if self.max_per_peer and self._in_flight[peer] >= self.max_per_peer:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client connection ({peer}) already has {self.max_per_peer} calls in "
                "flight through the proxy, its limit (--max_concurrent_calls_per_peer): wait "
                "for answers before sending more, or spread calls over more connections")
        self._in_flight[peer] += 1

    def release(self, peer: str) -> None:
        self._in_flight[peer] -= 1
        if self._in_flight[peer] <= 0:
            del self._in_flight[peer]  # the table holds only peers with calls in flight

    def in_flight(self, peer: str) -> int:
        return self._in_flight.get(peer, 0)
