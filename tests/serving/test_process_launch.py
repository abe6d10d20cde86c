"""Launching `dpsr serve` / `dpsr proxy` children: they import dpsr_tf whatever the caller's
working directory and PYTHONPATH (a relative PYTHONPATH=. used to resolve against the child's
working directory, which was the package folder itself after the move to dpsr_tf/serving)."""
import os
import shutil

import pytest

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


def test_a_clean_stop_removes_the_work_folder_a_failure_keeps_it():
    # Before: every process left its /tmp/dpsr-<name>-* folder (log.txt, ports.json) behind,
    # dozens per test run.
    clean = process.ServerProcess("serve", ["--version"], "version")
    clean.launch()
    assert clean.proc.wait(timeout=process.START_TIMEOUT_S) == 0, clean.log_tail()
    assert os.path.isfile(clean.log_path)
    assert clean.stop() == 0
    assert not os.path.exists(clean.workdir)

    failed = process.ServerProcess("serve", ["--no_such_flag=1"], "bad_flag")
    try:
        with pytest.raises(RuntimeError) as raised:
            failed.start()
        assert failed.proc.returncode != 0
        assert failed.log_path in str(raised.value)  # the error says where the log is
        assert os.path.isfile(failed.log_path)  # ... and it is kept (stop() ran on failure)
    finally:
        shutil.rmtree(failed.workdir, ignore_errors=True)


def test_a_work_folder_in_a_given_log_dir_is_kept(tmp_path):
    child = process.ServerProcess("serve", ["--version"], "version", log_dir=str(tmp_path))
    child.launch()
    assert child.proc.wait(timeout=process.START_TIMEOUT_S) == 0, child.log_tail()
    assert child.stop() == 0
    assert os.path.isfile(child.log_path)  # the caller's folder: the caller cleans it
