"""layout.building: a layout appears at its path whole or not at all."""
import os

import pytest

from dpsr_tf.data import layout as layout_lib


def _tree(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


def test_a_finished_build_replaces_the_older_layout(tmp_path):
    output = str(tmp_path / "layout")
    os.makedirs(output)
    (tmp_path / "layout" / "old.txt").write_text("old")
    with layout_lib.building(output) as tmp:
        assert tmp != output and _tree(tmp) == []
        (tmp_path / os.path.basename(tmp) / "new.txt").write_text("new")
        assert _tree(output) == ["old.txt"]  # the old layout serves until the end
    assert _tree(output) == ["new.txt"]
    assert _tree(str(tmp_path)) == ["layout"]  # no temporary directory left


def test_a_failed_build_leaves_the_older_layout_and_no_half_layout(tmp_path):
    output = str(tmp_path / "layout")
    os.makedirs(output)
    (tmp_path / "layout" / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with layout_lib.building(output) as tmp:
            (tmp_path / os.path.basename(tmp) / "half.txt").write_text("half")
            raise KeyboardInterrupt  # also an interrupted run
    assert _tree(output) == ["old.txt"]
    assert _tree(str(tmp_path)) == ["layout"]


def test_a_stale_temporary_directory_is_cleared_first(tmp_path):
    output = str(tmp_path / "layout")
    stale = output + f".tmp-{os.getpid()}"
    os.makedirs(stale)
    (tmp_path / os.path.basename(stale) / "stale.txt").write_text("from a killed run")
    with layout_lib.building(output) as tmp:
        assert _tree(tmp) == []
    assert _tree(output) == []
