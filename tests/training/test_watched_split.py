"""Early stopping evaluates the validation split carved from the training queries: the driver's
evaluation input reads it and dpsr_config.json records it; a layout prepared before it existed
falls back to the eval split; a split the layout lacks is an error before any training."""
import json
import os
import shutil

import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pipeline
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig


class _Stop(Exception):
    """Raised by the spy once the evaluation input is asked for: nothing trains."""


def _split_read(monkeypatch, layout_dir, model_dir, **train_kwargs):
    """The split the driver's evaluation input reads (the spy stops the run there)."""
    seen = []

    def spy(_, **kwargs):
        seen.append(kwargs["split"])
        raise _Stop()
    monkeypatch.setattr(pipeline, "make_eval_input_fn", spy)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = ModelConfig(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
                      item_hidden_units=(16,), query_hidden_units=(16,),
                      query_projection_dim=8)
    train = TrainConfig(layout_dir=layout_dir, model_dir=model_dir, batch_size=16,
                        max_train_steps=20, eval_every_steps=10, save_checkpoints_steps=10,
                        **train_kwargs)
    with pytest.raises(_Stop):
        driver.train_and_evaluate(cfg, train)
    return seen[0]


def _recorded_split(model_dir):
    with open(os.path.join(model_dir, model_dir_lib.CONFIG_FILE), encoding="utf-8") as f:
        return json.load(f)["train"]["eval_split"]


def _without_validation(layout_dir, out):
    """A copy of the layout as prepared before the validation split existed."""
    shutil.copytree(layout_dir, out)
    path = os.path.join(out, layout_lib.LAYOUT_JSON)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for rel in data["record_files"].pop("validation"):
        data["record_checks"].pop(rel)
        os.remove(os.path.join(out, rel))
    data["num_records"].pop("validation")
    data["split"].pop("validation")
    data["counts"]["splits"].pop("validation")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return out


@pytest.mark.parametrize("fixed_steps", [False, True])
def test_the_driver_evaluates_the_validation_split(tiny_layout, tmp_path, monkeypatch,
                                                   fixed_steps):
    assert "validation" in tiny_layout.record_files
    model_dir = str(tmp_path / "m")
    kwargs = {"train_steps": 20} if fixed_steps else {}
    assert _split_read(monkeypatch, tiny_layout.layout_dir, model_dir, **kwargs) == "validation"
    assert _recorded_split(model_dir) == "validation"


def test_a_layout_without_validation_falls_back_to_eval(tiny_layout, tmp_path, monkeypatch):
    old = _without_validation(tiny_layout.layout_dir, str(tmp_path / "old"))
    model_dir = str(tmp_path / "m")
    assert _split_read(monkeypatch, old, model_dir) == "eval"
    assert _recorded_split(model_dir) == "eval"


def test_eval_on_request_and_an_unknown_split(tiny_layout, tmp_path, monkeypatch):
    assert _split_read(monkeypatch, tiny_layout.layout_dir, str(tmp_path / "a"),
                       eval_split="eval") == "eval"
    with pytest.raises(ValueError, match="eval_split='nope'.*has the splits"):
        _split_read(monkeypatch, tiny_layout.layout_dir, str(tmp_path / "b"), eval_split="nope")
