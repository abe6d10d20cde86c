"""Per-client fairness in the proxy: a cap on the calls one client connection has in flight,
a fair share of the backend capacity, and the client's identity passed on to the backends.

A client that opens thousands of concurrent calls on one channel would otherwise fill the
proxy's event loop and the model servers' queues ahead of everyone else, and the model
servers would see its calls and everyone else's on the proxy's one connection. So:
- PeerLimiter: beyond `max_per_peer` calls in flight, a call is answered RESOURCE_EXHAUSTED at
  once (gRPC clients treat it as "back off and retry"), before any backend work.
- BackendGate: at most `max_in_flight` client calls do backend work at once, and one peer
  holds at most `max_per_peer` of them (default: half); the others wait in the proxy, one FIFO
  per peer, and a freed slot goes to the waiting peer with the fewest calls doing backend work
  (ties: the peer served longest ago). A flood waits behind its own calls, not in front of
  another client's, and since it cannot hold every slot, another client's call finds one free
  at once instead of waiting for the flood's next answer; a call that waits past its deadline
  is answered DEADLINE_EXCEEDED without having reached a backend.
- CLIENT_METADATA_KEY: the proxy sends the peer with each backend call, so a model server's
  per-client queues (its run queue, its batch queues) tell the proxy's clients apart.
"""
import asyncio
import collections
import contextvars
from typing import Optional

import grpc

from dpsr_tf.serving import stream_limits
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.grpc_calls import CLIENT_METADATA_KEY

# The defaults of `dpsr proxy` (ProxyOptions and the CLI's flags; kept here, where the CLI can
# read them without importing the proxy's server and its TensorFlow protos).
# Generous for one client connection (a client at 1,000 QPS and 50 ms holds 50), small beside
# the thousands one hostile channel can open.
DEFAULT_MAX_CALLS_PER_PEER = 256
# Below a model server's per-client queue bound (--max_queued_requests_per_client, 256), and
# no more than the calls it lets one connection open, so that the proxy's fair gate, not one
# backend connection's FIFO, picks which client's call goes next: derived from the cores
# (`dpsr proxy --max_backend_calls_in_flight=-1`, 64 per core).
DEFAULT_MAX_BACKEND_CALLS = stream_limits.DEFAULT_MAX_STREAMS_PER_CONNECTION
# The peer whose call the current asyncio task serves (the proxy sets it per call; the
# backend calls it starts copy it with their context).
current_peer: contextvars.ContextVar = contextvars.ContextVar("dpsr_proxy_peer", default="")


def backend_metadata() -> Optional[tuple]:
    """The metadata of a backend call made for the current peer (None outside a call)."""
    peer = current_peer.get()
    return ((CLIENT_METADATA_KEY, peer),) if peer else None


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


class BackendGate:
    """At most `max_in_flight` calls (0: no limit) do backend work at once, shared by peers,
    at most `max_per_peer` of them one peer's (None: half of max_in_flight, rounded up).

    Use from the proxy's event loop only: `await acquire(peer, timeout)`, then release(peer)
    once the call's backend work is over.
    """

    def __init__(self, max_in_flight: int, max_per_peer: Optional[int] = None):
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight is {max_in_flight}; it must be >= 0 (0: no limit)")
        if max_per_peer is None:
            max_per_peer = (max_in_flight + 1) // 2
        if max_in_flight and not 1 <= max_per_peer <= max_in_flight:
            raise ValueError(f"max_per_peer is {max_per_peer}; it must be between 1 and "
                             f"max_in_flight ({max_in_flight})")
        self.max_in_flight = max_in_flight
        self.max_per_peer = max_per_peer
        self._running = collections.Counter()  # peer -> calls holding a slot
        self._total = 0
        self._waiting = collections.OrderedDict()  # peer -> deque of futures, in turn order

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    def running(self, peer: str) -> int:
        """Calls of `peer` holding a slot."""
        return self._running.get(peer, 0)

    async def acquire(self, peer: str, timeout: Optional[float]) -> None:
        """Waits for a slot for a call of `peer`.

        Raises:
          ServingError(DEADLINE_EXCEEDED): no slot within `timeout` seconds (None: no bound).
          asyncio.CancelledError: the call was cancelled while it waited (it holds no slot).
        """
        # Peers still waiting while a slot is free are all at their share (release() grants
        # the others), so a call under its share takes a free slot at once.
        if not self.max_in_flight or (self._total < self.max_in_flight
                                      and self.running(peer) < self.max_per_peer):
            self._grant(peer)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(peer, collections.deque()).append(granted)
        try:
            await asyncio.wait_for(granted, timeout)
        except BaseException as e:
            if granted.done() and not granted.cancelled():
                self.release(peer)  # the slot came as the call gave up: pass it on
            else:
                self._forget(peer, granted)
            if isinstance(e, asyncio.TimeoutError):
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the call waited {timeout:.3f} s for the proxy's backend capacity "
                    f"(--max_backend_calls_in_flight={self.max_in_flight}, shared by client "
                    f"connections, at most {self.max_per_peer} per connection: "
                    "--max_backend_calls_per_peer)") from None
            raise

    def release(self, peer: str) -> None:
        """Ends the backend work of a call of `peer`; the slot goes to the next waiting call."""
        self._running[peer] -= 1
        self._total -= 1
        if self._running[peer] <= 0:
            del self._running[peer]
        while self._waiting and self._total < self.max_in_flight:
            # The waiting peer under its share with the fewest calls running; the
            # OrderedDict's order (the peer served longest ago first) breaks ties.
            eligible = [p for p in self._waiting if self.running(p) < self.max_per_peer]
            if not eligible:
                break
            nxt = min(eligible, key=self.running)
            queue = self._waiting[nxt]
            granted = queue.popleft()
            if queue:
                self._waiting.move_to_end(nxt)
            else:
                del self._waiting[nxt]
            if not granted.done():
                self._grant(nxt)
                granted.set_result(None)

    def _grant(self, peer: str) -> None:
        self._running[peer] += 1
        self._total += 1

    def _forget(self, peer: str, granted) -> None:
        queue = self._waiting.get(peer)
        if queue is None:
            return
        try:
            queue.remove(granted)
        except ValueError:
            pass
        if not queue:
            del self._waiting[peer]
