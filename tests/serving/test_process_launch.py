"""Launching `dpsr serve` / `dpsr proxy` children: they import dpsr_tf whatever the caller's
working directory and PYTHONPATH (a relative PYTHONPATH=. used to resolve against the child's
working directory, which was the package folder itself after the move to dpsr_tf/serving)."""
import os

from dpsr_tf.demo import server_processes as process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_child_imports_dpsr_tf_with_a_relative_pythonpath(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", ".")
    child = process.ServerProcess("serve", ["--version"], "version", log_dir=str(tmp_path))
    child.launch()
    assert child.proc.wait(timeout=process.START_TIMEOUT_S) == 0, child.log_tail()
    assert "TensorFlow ModelServer: dpsr serve" in child.log_tail()
    assert os.path.isfile(os.path.join(process._PACKAGE_PARENT, "dpsr_tf", "__init__.py"))  # pylint: disable=protected-access
