"""The command lines behind the report's numbers, rebuilt from what the runs recorded.

A model directory holds its resolved configuration (dpsr_config.json, written by `dpsr train`);
every ModelConfig and TrainConfig field is a `dpsr train` flag of the same name, so the
training command is `dpsr train` plus every field that differs from its default.
"""
import dataclasses
import shlex
from typing import List, Optional, Sequence

from dpsr_tf.model.config import ModelConfig
from dpsr_tf.training.config import TrainConfig


def _flag(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return shlex.quote(f"--{name}={value}")


def _differing(defaults, saved: dict, skip: Sequence[str] = ()) -> List[str]:
    out = []
    for field in dataclasses.fields(defaults):
        if field.name in skip or field.name not in saved:
            continue
        value, default = saved[field.name], getattr(defaults, field.name)
        if isinstance(default, tuple):
            default = list(default)
        if value != default and value is not None:
            out.append(_flag(field.name, value))
    return out


def train_command(saved_config: dict, overrides: Optional[dict] = None) -> str:
    """`dpsr train ...` that trains the model of a dpsr_config.json (as a dict).

    Args:
      saved_config: the parsed MODEL/dpsr_config.json.
      overrides: fields to set on top (e.g. {"alpha": 0.25, "train_steps": 300}).
    """
    model = dict(saved_config.get("model", {}))
    train = dict(saved_config.get("train", {}))
    for key, value in (overrides or {}).items():
        (model if key in model else train)[key] = value
    parts = ["dpsr train", _flag("layout_dir", train.get("layout_dir", "LAYOUT")),
             _flag("model_dir", train.get("model_dir", "MODEL"))]
    parts += _differing(ModelConfig(), model)
    parts += _differing(TrainConfig(layout_dir="LAYOUT", model_dir="MODEL"), train,
                        skip=("layout_dir", "model_dir"))
    return " ".join(parts)


def evaluate_command(model_dir: Optional[str], layout_dir: Optional[str], split: str,
                     num_random: int, seed: int, *, bm25: bool = False,
                     index_dir: Optional[str] = None) -> str:
    """`dpsr evaluate ...` that prints the same metrics (--hybrid when an index is given)."""
    parts = ["dpsr evaluate"]
    if model_dir:
        parts.append(_flag("model_dir", model_dir))
    if layout_dir:
        parts.append(_flag("layout_dir", layout_dir))
    parts += [_flag("split", split), _flag("num_random", num_random), _flag("seed", seed)]
    if bm25:
        parts.append("--bm25")
    if index_dir:
        parts += ["--hybrid", _flag("index_dir", index_dir)]
    return " ".join(parts)


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
