"""Default limits of `dpsr serve` and `dpsr proxy`, derived from the cores the process may use.

Every share of the machine scales with its cores, so that a limit right on 2 cores neither
starves a lone heavy client on 32 nor admits too much on 1. The factors are the values measured
on a 2-core host (docs/benchmarks.md), divided by its 2 cores. What the cores cannot tell, the
time a call takes, is measured while serving: the queue delay control's target is the larger of
its flag and the smoothed run time (queue_delay.py), and the expected wait of a new call counts
one run time per turn. Each flag overrides its default.
"""
import os
from typing import Optional

# An unbatched run executes its ops on its run thread, so one thread computes on one core at a
# time; it also waits off the CPU for part of each call (for the GIL, to hand the answer to the
# event loop). Four per core keep every core computing: 8 on 2 cores. Three on 2 cores served
# alike calls at 800 QPS with a lower p99, but ran fewer calls side by side, so a burst of heavy
# calls from many connections delayed short ones (docs/benchmarks.md, "Fewer run threads").
RUN_THREADS_PER_CORE = 4
# So short runs (whose size has held a thread 2 ms or less) hold at most the cores + 1 threads,
# and longer runs may take the rest: alike short calls run three at a time on 2 cores, and a
# burst of long ones still leaves short calls threads of their own (docs/benchmarks.md, "Short
# runs bounded").
SHORT_RUNS_OVER_CORES = 1
# The native front end's calls at the server at once: enough waiting at the run threads and the
# batcher to keep every core busy (front_end_cc/flags.cc applies the same rule).
FRONT_END_RUNNING_PER_CORE = 16
# One client's share of those: one call computing and one in transfer per core, so one client
# alone can fill the machine and no more.
FRONT_END_RUNNING_PER_CLIENT_PER_CORE = 2
# HTTP/2 streams one connection may open, per call the front end lets run at once: one
# connection (a proxy's, carrying all of its clients) can keep every running slot busy and have
# three times as many waiting, which the queue delay control keeps within its target. 128 on
# 2 cores (nginx's HTTP/2 default).
STREAMS_PER_RUNNING_CALL = 4
# On the native front end's port, four times as many (512 on 2 cores). Its gate refuses a call that
# cannot be served in time at once, so a connection's extra calls are better at the gate, which
# answers RESOURCE_EXHAUSTED in about a millisecond, than held by the client's transport, which
# tells nobody: at 3x capacity on one connection the answered calls' latency spikes filled 128
# streams, and calls waited in the client for a stream before they were refused, 36-46 ms after
# they were due (p99), against 3-8 ms with 512 (docs/benchmarks.md, "Capacity and past it").
NATIVE_FRONT_END_STREAMS_PER_RUNNING_CALL = 16


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def _cores(cores: Optional[int]) -> int:
    if cores is not None and cores < 1:
        raise ValueError(f"cores is {cores}; it must be >= 1")
    return cores or usable_cores()


def run_threads(cores: Optional[int] = None) -> int:
    """`dpsr serve --num_run_threads=0`: threads for unbatched runs, 4 per core."""
    return RUN_THREADS_PER_CORE * _cores(cores)


def short_runs(cores: Optional[int] = None) -> int:
    """`dpsr serve --max_short_runs=0`: the usable cores plus one (3 on 2 cores)."""
    return _cores(cores) + SHORT_RUNS_OVER_CORES


def running_per_client(num_threads: int, cores: Optional[int] = None) -> int:
    """`dpsr serve --max_run_threads_per_client=0`: half the run threads (rounded up), at most
    the cores: one client's runs beyond them add nothing to its own rate (its queued runs start
    as soon as one ends) and only take CPU from the other clients' runs."""
    return max(1, min((num_threads + 1) // 2, _cores(cores)))


def front_end_running(cores: Optional[int] = None) -> int:
    """`--front_end_max_running=0`: 16 calls per core at the server at once."""
    return FRONT_END_RUNNING_PER_CORE * _cores(cores)


def front_end_running_per_client(max_running: int, cores: Optional[int] = None) -> int:
    """`--front_end_max_running_per_client=0`: 2 per core, at most `max_running`."""
    return max(1, min(max_running, FRONT_END_RUNNING_PER_CLIENT_PER_CORE * _cores(cores)))


def streams_per_connection(cores: Optional[int] = None, native_front_end: bool = False) -> int:
    """`--max_streams_per_connection=-1` (serve and proxy) and the proxy's
    `--max_backend_calls_in_flight=-1`: 4 per call the front end runs at once, 64 per core; on
    the native front end's port (`native_front_end`) 16 per call, 256 per core."""
    per_call = (NATIVE_FRONT_END_STREAMS_PER_RUNNING_CALL if native_front_end
                else STREAMS_PER_RUNNING_CALL)
    return per_call * front_end_running(cores)
