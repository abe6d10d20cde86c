"""Waiting in tests on events and progress, never on a wall-clock window.

A loaded CI machine runs everything several times slower, so a test waits for what it needs
(a checkpoint, a log line, a count of answers) and gives up only when nothing has moved for a
long time: `wait_until` fails after `stall_s` seconds *without progress*, however long the
whole wait takes while progress continues. The bounds here only turn a hang into a failure.
"""
import time
from typing import Callable, Hashable, Optional, TypeVar

T = TypeVar("T")

# No progress for this long means a hang (a quiet machine needs seconds for any step here).
STALL_S = 300.0
# Subprocesses of the CLI under test: a guard against hangs, not a speed requirement.
SUBPROCESS_TIMEOUT_S = 900


def wait_until(condition: Callable[[], T], what: str,
               progress: Optional[Callable[[], Hashable]] = None,
               check: Optional[Callable[[], None]] = None,
               stall_s: float = STALL_S, poll_s: float = 0.1) -> T:
    """Polls until `condition()` is truthy and returns its value.

    Args:
      condition: the awaited state; its truthy value is returned.
      what: named in the failure message.
      progress: returns a value that changes whenever the awaited work advances (a step
        counter, log sizes); the stall clock restarts at each change. None: the stall clock
        runs from the start.
      check: raises when waiting is pointless (a process died); called every poll.
      stall_s: seconds without progress after which the wait fails.
      poll_s: seconds between polls.

    Raises:
      AssertionError: no progress for stall_s seconds.
    """
    last = progress() if progress else None
    moved_at = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        if check is not None:
            check()
        if progress is not None:
            now = progress()
            if now != last:
                last, moved_at = now, time.monotonic()
        if time.monotonic() - moved_at > stall_s:
            raise AssertionError(f"no progress towards {what} for {stall_s:.0f} s "
                                 f"(last progress: {last!r})")
        time.sleep(poll_s)
