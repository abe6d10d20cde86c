"""`dpsr serve` runs TensorFlow's Eigen CPU kernels, not oneDNN's, unless the operator sets
TF_ENABLE_ONEDNN_OPTS (startup.prefer_eigen_kernels): oneDNN kept ~180 MiB per large batch
shape for good (docs/benchmarks.md). TensorFlow reads the variable once, when it loads, so
the checks run in fresh interpreters and a real server process, and read the state back from
TensorFlow itself."""
import os
import subprocess
import sys
import textwrap

import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import startup


@pytest.mark.parametrize("environ, want_env, want_set", [
    ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, True),
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {"TF_ENABLE_ONEDNN_OPTS": "1"}, False),
    ({"TF_ENABLE_ONEDNN_OPTS": "0", "X": "y"}, {"TF_ENABLE_ONEDNN_OPTS": "0", "X": "y"}, False),
])
def test_the_operators_setting_wins(environ, want_env, want_set):
    assert startup.prefer_eigen_kernels(environ) is want_set
    assert environ == want_env


_PROGRAM = textwrap.dedent("""
    from dpsr_tf.serving import startup
    startup.prefer_eigen_kernels()
    import tensorflow as tf
    print("onednn", int(startup.onednn_kernels_in_use()))
""")


@pytest.mark.parametrize("operator, want", [(None, 0), ("1", 1), ("0", 0)])
def test_tensorflow_loads_with_the_chosen_kernels(operator, want):
    env = {k: v for k, v in os.environ.items() if k != startup.ONEDNN_ENV}
    if operator is not None:
        env[startup.ONEDNN_ENV] = operator
    out = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.split()[-2:] == ["onednn", str(want)], out.stderr[-2000:]


def test_a_model_server_process_says_which_kernels_it_runs(toy_model_dir, tmp_path,
                                                           monkeypatch):
    monkeypatch.delenv(startup.ONEDNN_ENV, raising=False)
    with process.model_server_process(toy_model_dir, "dpsr", log_dir=str(tmp_path)) as server:
        server.start()
        log = server.log_tail(400)
    assert "TensorFlow's oneDNN CPU kernels: off (TF_ENABLE_ONEDNN_OPTS=0)" in log, log
