"""`dpsr index` and `dpsr export` on a damaged checkpoint: one message naming the damaged file,
what is wrong and what to do, a non-zero exit, and no traceback (real CLI, in a subprocess)."""
import os
import shutil
import subprocess
import sys

import pytest

from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_history_model):
    work = tmp_path_factory.mktemp("checkpoint_errors")
    model_dir = tiny_history_model.model_dir
    index_dir = str(work / "index")
    catalog_index.index_catalog(model_dir, index_dir, IndexBuildConfig(factory="Flat"),
                                lexical=None)
    return {"work": work, "model_dir": model_dir, "index_dir": index_dir,
            "checkpoint": f"model.ckpt-{tiny_history_model.train_steps}"}


def _damaged_copy(trained, tmp_path, damage):
    """A copy of the model directory whose newest checkpoint has a truncated file; returns
    (the copy, the damaged file)."""
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained["model_dir"], model_dir)
    suffix = ".data-00000-of-00001" if damage == "data_truncated" else ".index"
    damaged = os.path.join(model_dir, trained["checkpoint"] + suffix)
    os.truncate(damaged, os.path.getsize(damaged) // 2)
    return model_dir, damaged


def _dpsr(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("damage", ["data_truncated", "index_truncated"])
@pytest.mark.parametrize("command", ["index", "export"])
def test_damaged_checkpoint_is_one_clear_message(trained, tmp_path, command, damage):
    model_dir, damaged = _damaged_copy(trained, tmp_path, damage)
    if command == "index":
        code, output = _dpsr("index", f"--model_dir={model_dir}",
                             f"--output_dir={tmp_path / 'index'}", "--index_factory=Flat")
    else:
        code, output = _dpsr("export", f"--model_dir={model_dir}",
                             f"--index_dir={trained['index_dir']}",
                             f"--export_base={tmp_path / 'models' / 'dpsr'}", "--nohybrid")
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [l for l in output.splitlines() if l.startswith(f"dpsr {command}: checkpoint")]
    assert f"{damaged} is damaged or incomplete" in line
    if damage == "data_truncated":
        assert "(truncated: " in line
    assert "--checkpoint" in line and "Copy the checkpoint again" in line
    written = [f for _, _, files in os.walk(tmp_path / "models") for f in files]
    assert written == []  # nothing half-written
