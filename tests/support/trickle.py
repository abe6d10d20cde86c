"""A fake clock and a connection that trickles its bytes, for read-pacing tests (REST heads
and bodies): each read past the first burst returns one byte and moves the clock one step, so
time limits are checked by counting reads, never by waiting."""
import io


class FakeClock:
    """Monotonic seconds that only move when a test moves them."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self):
        return self.now


class Trickle(io.RawIOBase):
    """A connection that sends `first` at once (after `idle` seconds on `clock`), then `byte`
    once per read, `step` seconds apart."""

    def __init__(self, first: bytes, clock: FakeClock, step: float, byte: bytes = b" ",
                 idle: float = 0.0):
        self._first = first
        self._clock = clock
        self._step = step
        self._byte = byte
        self._idle = idle
        self.reads = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.reads += 1
        if self._first:
            self._clock.now += self._idle
            self._idle = 0.0
            n = min(len(b), len(self._first))
            b[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        self._clock.now += self._step
        b[:1] = self._byte
        return 1
