"""`dpsr serve` takes every flag of tensorflow_model_server (model_servers/main.cc), so a TF
Serving command line starts it unchanged. The list is transcribed in tfs_main_cc_flags.txt
(its source noted there); flags that cannot apply on this CPU server are accepted with a
startup line (test_tfs_server_core.py::test_accepted_flags_and_notices)."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _main_cc_flags():
    with open(os.path.join(HERE, "tfs_main_cc_flags.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_the_transcribed_list_is_whole():
    names = _main_cc_flags()
    assert len(names) == 48 and len(set(names)) == 48
    assert "xla_gpu_compilation_enabled" in names and "enable_profiler" in names


def test_dpsr_serve_knows_every_main_cc_flag():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "serve", "--helpfull"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                            check=False)
    known = set(re.findall(r"--(?:\[no\])?([a-z_0-9]+):", result.stdout))
    assert "model_base_path" in known, result.stdout[-2000:] + result.stderr[-2000:]
    missing = [name for name in _main_cc_flags() if name not in known]
    assert not missing, f"dpsr serve does not know {missing}"
