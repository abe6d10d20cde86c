"""Queue delay control of per-client queues (CoDel at arrival), the rule of the native front
end's gate (front_end_cc/fair_gate.h) for the Python server's run queue.

Past capacity a client's queue only grows, and in arrival order every call then waits nearly
its whole deadline: the server spends its capacity on answers nobody waits for. Here a client
whose oldest waiting call has waited at least the target for a whole interval (a standing
queue, not a burst) has its new calls refused at once, until its oldest waiting call is younger
than the target again: the excess learns at once (RESOURCE_EXHAUSTED) and costs no run, and the
queue stays about one target deep, so the calls admitted are answered fast. The target is the
larger of the configured one and the measured service time (a smoothed average of how long a
run takes), so a servable whose runs take 50 ms is not refused for queueing one run's worth.
A client refused within the last REFUSAL_MEMORY intervals is refused again as soon as its
oldest call waits past the target, without a new interval of grace (CoDel's memory of its last
dropping state): otherwise, past capacity, each grace admits a whole interval of arrivals that
then wait several intervals to run. A burst after a quiet spell still has its whole interval.

With the control on, a call with a deadline that ends before its expected turn (its client's waiting calls ahead of
it, in turns of the client's share of run threads, one service time each) is refused at once
too. Times are the caller's (seconds here), so the rules are testable with a fake clock.
Not thread-safe: the run queue holds its lock around every call.
"""
from typing import Hashable, Optional

# How long (in intervals) a client's last refusal is remembered: CoDel re-enters its dropping
# state at once within 16 intervals of leaving it (front_end_cc/fair_gate.h, the same rule).
REFUSAL_MEMORY = 16
# Clients whose last refusal is remembered before the ones past the memory are pruned (then
# again each time the count doubles, so pruning stays a constant cost per refusal).
_REMEMBERED_CLIENTS = 4096


class QueueDelay:
    """The standing-queue and expected-wait rules for many clients' queues.

    Args:
      target: queue delay target in seconds; 0: no standing-queue refusals.
      interval: how long a queue must stay above the target before calls are refused.
    """

    def __init__(self, target: float, interval: float):
        if target < 0 or interval <= 0:
            raise ValueError(f"queue delay target {target} s / interval {interval} s: the target "
                             "must be >= 0 (0: off) and the interval > 0")
        self._target = target
        self._interval = interval
        self._service = 0.0
        self._above_until = {}  # client -> when its queue stands; absent: below the target
        self._refused_at = {}   # client -> when its standing queue last refused a call
        self._prune_at = _REMEMBERED_CLIENTS

    @property
    def on(self) -> bool:
        """Whether the control refuses anything (a target was given)."""
        return self._target > 0

    @property
    def service_time(self) -> float:
        """The smoothed run time in seconds (0 while none was measured)."""
        return self._service

    @property
    def target(self) -> float:
        """The delay target in effect: the configured one or the service time if longer."""
        return max(self._target, self._service)

    @property
    def interval(self) -> float:
        """How long a queue must stand above the target before calls are refused (seconds)."""
        return self._interval

    def observe_service(self, seconds: float) -> None:
        """A run took `seconds`: the average moves 1/8 of the way to it (TCP's smoothed RTT)."""
        seconds = max(0.0, seconds)
        self._service = seconds if self._service == 0 else (
            self._service + (seconds - self._service) / 8)

    def standing(self, client: Hashable, oldest_since: Optional[float], now: float) -> bool:
        """Whether `client`'s queue, whose oldest waiting call arrived at `oldest_since` (None:
        nothing waits), has stood above the target for a whole interval at `now` (at once when
        the client was refused within the last REFUSAL_MEMORY intervals)."""
        if self._target <= 0 or oldest_since is None or now - oldest_since < self.target:
            self._above_until.pop(client, None)
            return False
        until = self._above_until.get(client)
        if until is None:
            refused = self._refused_at.get(client)
            recent = refused is not None and now - refused < REFUSAL_MEMORY * self._interval
            until = self._above_until[client] = now if recent else now + self._interval
        if now < until:
            return False
        self._refused_at[client] = now
        if len(self._refused_at) > self._prune_at:  # keep only the refusals still recalled
            horizon = now - REFUSAL_MEMORY * self._interval
            self._refused_at = {c: t for c, t in self._refused_at.items() if t >= horizon}
            self._prune_at = max(_REMEMBERED_CLIENTS, 2 * len(self._refused_at))
        return True

    @property
    def remembered(self) -> int:
        """How many clients' last refusals are kept (bounded: see _REMEMBERED_CLIENTS)."""
        return len(self._refused_at)

    def expected_wait(self, waiting: int, share: int) -> float:
        """When a new call starts behind `waiting` calls of its client, whose calls run `share`
        at a time: one service time per turn (0 while no service time was measured)."""
        return (waiting // max(1, share) + 1) * self._service

    def forget(self, client: Hashable) -> None:
        """`client` has nothing waiting any more (its last refusal stays remembered)."""
        self._above_until.pop(client, None)
