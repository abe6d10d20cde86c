"""The limits `dpsr serve` and `dpsr proxy` derive from the machine's cores (capacity.py):
hand-worked values for 1, 2, 3 and 32 cores, and the flags' defaults resolved on a machine
whose affinity mask is faked."""
import pytest

from dpsr_tf.serving import capacity, stream_limits
from tests.support.fresh_python import run_fresh


@pytest.mark.parametrize(
    "cores, threads, per_client, short, running, running_per_client, streams, native_streams", [
        # threads 4/core; per client half of them, at most the cores; short runs the cores
        # + 1; front end 16/core and 2/core; streams 4 per front-end call = 64/core, on the
        # native front end's port 16 per call = 256/core.
        (1, 4, 1, 2, 16, 2, 64, 256),
        (2, 8, 2, 3, 32, 4, 128, 512),  # the values tuned on the 2-core host
        (3, 12, 3, 4, 48, 6, 192, 768),
        (32, 128, 32, 33, 512, 64, 2048, 8192),
    ])
def test_limits_scale_with_the_cores(cores, threads, per_client, short, running,
                                     running_per_client, streams, native_streams):
    assert capacity.run_threads(cores) == threads
    assert capacity.short_runs(cores) == short
    assert capacity.running_per_client(threads, cores) == per_client
    assert capacity.front_end_running(cores) == running
    assert capacity.front_end_running_per_client(running, cores) == running_per_client
    assert capacity.streams_per_connection(cores) == streams
    assert capacity.streams_per_connection(cores, native_front_end=True) == native_streams


def test_shares_never_exceed_their_total_nor_fall_below_one():
    assert capacity.front_end_running_per_client(3, cores=4) == 3  # 8 capped by 3 in all
    assert capacity.running_per_client(1, cores=8) == 1
    assert capacity.running_per_client(7, cores=64) == 4  # (7 + 1) // 2


def test_a_core_count_below_one_is_refused():
    with pytest.raises(ValueError, match="cores is 0"):
        capacity.run_threads(0)


def test_stream_limit_minus_one_is_derived_others_are_kept(monkeypatch):
    monkeypatch.setattr(capacity.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert capacity.usable_cores() == 3
    assert stream_limits.resolve(stream_limits.DERIVED) == 192
    assert stream_limits.resolve(stream_limits.DERIVED, native_front_end=True) == 768
    assert stream_limits.resolve(0) == 0  # no limit
    assert stream_limits.resolve(50) == 50
    assert stream_limits.resolve(50, native_front_end=True) == 50  # a given value is kept


def test_serve_defaults_follow_the_cores_and_flags_override(tmp_path):
    """In a fresh process: `dpsr serve`'s flags are absl flags of the whole process, and
    another command's module (dpsr export) defines flags of the same names."""
    options = run_fresh(f"""
        import json
        from absl import flags
        from absl.testing import flagsaver
        from dpsr_tf.cli.serve import options_from_flags
        from dpsr_tf.serving import capacity
        capacity.os.sched_getaffinity = lambda pid: {{0, 3, 5}}  # 3 usable cores

        def options(*args, front_end="python"):
            with flagsaver.flagsaver():
                flags.FLAGS(["dpsr", "--model_base_path={tmp_path}", "--model_name=m",
                             "--front_end=" + front_end, *args])
                o, _ = options_from_flags()
                return [o.core.num_run_threads, o.core.max_run_threads_per_client,
                        o.max_streams_per_connection, o.core.max_short_runs]

        print(json.dumps([options(), options("--num_run_threads=5",
                                             "--max_streams_per_connection=0",
                                             "--max_run_threads_per_client=4",
                                             "--max_short_runs=2"),
                          options(front_end="native"),
                          options("--max_streams_per_connection=100", front_end="native")]))
        """)
    assert options == [[12, 3, 192, 4], [5, 4, 0, 2], [12, 3, 768, 4], [12, 3, 100, 4]]
