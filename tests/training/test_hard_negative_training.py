"""`dpsr train --hard_negatives_from`: a tiny end-to-end run (mine, then train with the mined
negatives joined) and the errors a user gets for bad values, through the real command."""
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import hard_negative_table
from dpsr_tf.model.model_dir import CONFIG_FILE
from tests.training.conftest import ROOT, TINY_MODEL_FLAGS


def _run(argv, env):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def source_model(tiny_layout, tmp_path_factory):
    """A tiny model trained 40 steps on tiny_layout: the model hard negatives are mined with."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    model_dir = str(tmp_path_factory.mktemp("hn_source") / "model")
    proc = _run([sys.executable, "-m", "dpsr_tf.cli", "train", f"--layout_dir="
                 f"{tiny_layout.layout_dir}", f"--model_dir={model_dir}", "--train_steps=40",
                 "--seed=0", *TINY_MODEL_FLAGS], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


def _scalars(model_dir, tag):
    values = []
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append(value.simple_value)
    return values


def test_tiny_run_mines_then_trains_with_the_negatives(tiny_layout, source_model, tmp_path,
                                                       dpsr_command, task_env,
                                                       tiny_model_flags):
    model_dir = str(tmp_path / "hn")
    argv = dpsr_command("train", f"--layout_dir={tiny_layout.layout_dir}",
                        f"--model_dir={model_dir}", "--train_steps=20", "--seed=0",
                        "--save_summary_steps=5", f"--hard_negatives_from={source_model}",
                        "--hard_negative_ranks=3,20", "--hard_negatives_per_query=4",
                        "--hard_negative_splits=train", "--max_hard_negatives=2",
                        *tiny_model_flags)
    proc = _run(argv, task_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hard negatives: " in proc.stderr and "queries mined" in proc.stderr
    assert f"warm-started from {source_model}" in proc.stderr
    prov = hard_negative_table.read_provenance(model_dir)
    assert prov["ranks"] == [3, 20] and prov["per_query"] == 4 and prov["splits"] == ["train"]
    assert prov["source_model_dir"] == os.path.abspath(source_model)
    items, splits = hard_negative_table.load_table(model_dir, tiny_layout.num_queries)
    assert prov["negatives"] == len(items) > 0
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-20")
    config = json.loads(open(os.path.join(model_dir, CONFIG_FILE)).read())
    assert config["train"]["hard_negatives_from"] == source_model
    # The training batches carried the negatives: pairs counted in the loss's summaries
    # (the batches hold train-split queries, which all have mined negatives, and pseudo-queries,
    # which were not mined here).
    pairs = _scalars(model_dir, "train/hard_negative_pairs")
    assert pairs and np.mean(pairs) > 0
    # Resuming with the same flags reuses the table (no second mining).
    proc = _run([a if not a.startswith("--train_steps") else "--train_steps=25" for a in argv],
                task_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing the table" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--hard_negatives_from=/no/such/model"],
     r"--hard_negatives_from='/no/such/model': no such directory; pass the model directory"),
    (["--hard_negative_ranks=500,900"],
     r"--hard_negative_ranks=500,900: the window starts beyond the catalog's 200 items"),
    (["--hard_negative_ranks=0,10"], r"hard_negative_ranks=\(0, 10\).*1 <= FIRST <= LAST"),
    (["--hard_negative_splits=train,eval"], r"--hard_negative_splits.*never eval"),
    (["--model=dssm", "--num_heads=1"], r"with --model=dssm: the DSSM baseline keeps its paper's random"),
    (["--hard_negative_weight=0"], r"--hard_negative_weight=0: the mined negatives would not "
                                   r"reach the loss"),
])
def test_bad_values_are_errors_naming_the_flag(tiny_layout, source_model, tmp_path,
                                               dpsr_command, task_env, tiny_model_flags,
                                               flags, message):
    argv = dpsr_command("train", f"--layout_dir={tiny_layout.layout_dir}",
                        f"--model_dir={tmp_path / 'hn'}", "--train_steps=5",
                        f"--hard_negatives_from={source_model}", *tiny_model_flags, *flags)
    proc = _run(argv, task_env)
    assert proc.returncode != 0
    assert "dpsr train: " in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if "--model=dssm" in flags or "--hard_negative_weight=0" in flags:  # before any mining
        assert "hard negatives: embedding" not in proc.stderr
        assert not os.path.exists(tmp_path / "hn" / "hard_negatives")
