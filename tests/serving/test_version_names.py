"""Regression tests (and the symlink confinement): version
directories are ASCII digits fitting int64; anything else is ignored with one log line and
never unloads the healthy version, stops polling or the server's start.

Before: "99999999999999999999" loaded as the latest and unloaded the healthy version (then
INTERNAL for every Predict); "²" passes str.isdigit() and failed int(), killing the poll of
that model and every model after it, and the start of the server."""
import logging
import os

import pytest

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.model_server.lifecycle.manager import ManagerOptions, VersionManager
from dpsr_tf.serving.model_server.lifecycle.version_dirs import version_number


class _FakeServable:
    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.closed = False

    def close(self):
        self.closed = True


class _Loader:
    def __init__(self):
        self.loaded = []

    def __call__(self, name, version, path):
        self.loaded.append((name, version))
        return _FakeServable(name, version, path)


def _config(models):
    config = config_lib.ModelServerConfig()
    for name, base in models:
        m = config.model_config_list.config.add()
        m.name, m.base_path, m.model_platform = name, str(base), "tensorflow"
    return config


@pytest.mark.parametrize("name,expected", [
    ("1", 1), ("0", 0), ("007", 7), (str(2 ** 63 - 1), 2 ** 63 - 1),
    (str(2 ** 63), None), ("99999999999999999999", None), ("²", None), ("１", None),
    ("٣", None), ("", None), ("-1", None), ("+1", None), ("1.0", None), (" 1", None),
    (".tmp-3", None)])
def test_version_number(name, expected):
    assert version_number(name) == expected


ODD = ("99999999999999999999", "²", "１２", str(2 ** 63))


def test_odd_version_dirs_are_ignored_once_and_never_unload(tmp_path, caplog):
    base = tmp_path / "dpsr"
    (base / "1").mkdir(parents=True)
    loader = _Loader()
    manager = VersionManager(ManagerOptions(file_system_poll_wait_seconds=0), loader)
    for name in ODD:                    # present at start: the server must start
        (base / name).mkdir()
    caplog.set_level(logging.WARNING, logger="serving.manager")
    config = _config([("dpsr", base)])
    manager.set_config(config)
    assert manager.available_versions("dpsr") == (1,)
    for _ in range(3):                  # later scans: no new log lines, nothing unloaded
        manager.set_config(config)
    assert manager.available_versions("dpsr") == (1,)
    assert loader.loaded == [("dpsr", 1)]
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == len(ODD), ignored   # one line per odd name, not one per scan
    assert all("ASCII digits" in m for m in ignored)
    (base / "2").mkdir()                # a real new version still rolls forward
    manager.set_config(config)
    assert manager.available_versions("dpsr") == (2,)
    manager.stop()


def test_odd_names_do_not_stop_other_models(tmp_path):
    """Version polling goes on for the models after a model with odd directories."""
    a, b = tmp_path / "a", tmp_path / "b"
    for base in (a, b):
        (base / "1").mkdir(parents=True)
    (a / "²").mkdir()
    manager = VersionManager(ManagerOptions(file_system_poll_wait_seconds=0), _Loader())
    config = _config([("a", a), ("b", b)])
    manager.set_config(config)
    (b / "5").mkdir()
    manager.set_config(config)
    assert manager.available_versions("a") == (1,)
    assert manager.available_versions("b") == (5,)
    manager.stop()


def test_failing_scan_of_one_model_is_logged_once(tmp_path, caplog, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for base in (a, b):
        (base / "1").mkdir(parents=True)
    manager = VersionManager(ManagerOptions(file_system_poll_wait_seconds=0), _Loader())
    config = _config([("a", a), ("b", b)])
    manager.set_config(config)
    from dpsr_tf.serving.model_server.lifecycle import version_dirs
    real_scan = version_dirs.scan

    def scan(base_path, *args):
        if base_path == str(a):
            raise OSError("disk on fire")
        return real_scan(base_path, *args)

    monkeypatch.setattr(version_dirs, "scan", scan)
    caplog.set_level(logging.ERROR, logger="serving.manager")
    (b / "2").mkdir()
    for _ in range(3):
        manager.set_config(config)
    assert manager.available_versions("b") == (2,)
    assert manager.available_versions("a") == (1,)
    assert sum("scanning model a failed" in r.getMessage() for r in caplog.records) == 1
    manager.stop()


def test_symlinked_version_outside_root_is_refused(tmp_path, caplog):
    root = tmp_path / "root"
    base = root / "dpsr"
    (base / "1").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "9"
    outside.mkdir(parents=True)
    os.symlink(outside, base / "9")
    inside = root / "shared" / "3"
    inside.mkdir(parents=True)
    os.symlink(inside, base / "3")     # a symlink that stays under the root is fine
    caplog.set_level(logging.WARNING, logger="serving.manager")
    loader = _Loader()
    manager = VersionManager(ManagerOptions(file_system_poll_wait_seconds=0,
                                            base_path_root=str(root)), loader)
    manager.set_config(_config([("dpsr", base)]))
    assert manager.available_versions("dpsr") == (3,)
    assert loader.loaded == [("dpsr", 3)]
    assert any("outside --model_base_path_root" in r.getMessage() for r in caplog.records)
    manager.stop()
