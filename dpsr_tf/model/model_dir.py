"""The resolved config in a model directory (dpsr_config.json) and reading it back.

`dpsr train` writes, on the chief, {"model": ModelConfig, "layout": LayoutSpec, "train":
TrainConfig, "cluster": ...} with every default filled in and embedding_partitions resolved, so
that export, indexing and evaluation rebuild the exact variables of the checkpoints
(`load_model_config`). The LayoutSpec travels inside the file, in the form of the layout's own
layout.json (dpsr_tf/data/layout.py), so a model directory copied to another machine still
loads without its layout directory.
"""
import glob
import json
import os
from typing import Optional, Tuple

import tensorflow as tf

from dpsr_tf.data.layout import layout_spec_from_dict, layout_spec_to_dict
from dpsr_tf.model.config import ModelConfig

CONFIG_FILE = "dpsr_config.json"
# Written by `dpsr train` when it ends: its wall seconds and the checkpoint it left.
TRAIN_TIME_FILE = "train_time.json"


def write_resolved_config(model_dir: str, model_config: ModelConfig, layout_spec,
                          extra: Optional[dict] = None) -> str:
    """Writes <model_dir>/dpsr_config.json (atomically) and returns its path.

    Raises:
      ValueError: model_dir already holds a config with a different ModelConfig or layout
        shape (its checkpoints would not restore into the new graph); the message lists the
        differing fields.
    """
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, CONFIG_FILE)
    data = {"model": model_config.to_dict(), "layout": layout_spec_to_dict(layout_spec)}
    data.update(extra or {})
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            old = json.load(f)
        old_model = ModelConfig.from_saved_dict(old.get("model", {})).to_dict() \
            if old.get("model") else {}
        diff = sorted(k for k in set(old_model) | set(data["model"])
                      if old_model.get(k) != data["model"].get(k))
        for key in ("token_id_space", "num_items", "item_features", "user_features"):
            if old.get("layout", {}).get(key) != data["layout"].get(key):
                diff.append(f"layout.{key}")
        if diff:
            raise ValueError(
                f"{path} was written for another model (fields differ: {diff}); its checkpoints "
                f"would not restore. Use a new --model_dir or the same settings.")
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=str))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def read_config_file(model_dir: str) -> dict:
    path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a model directory written "
                                "by `dpsr train`")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def load_model_config(model_dir: str) -> Tuple[ModelConfig, object]:
    """(ModelConfig, LayoutSpec) of a model directory written by `dpsr train`."""
    data = read_config_file(model_dir)
    source = os.path.join(model_dir, CONFIG_FILE)
    return (ModelConfig.from_saved_dict(data["model"], source),
            layout_spec_from_dict(data["layout"], source, path="layout"))


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files cannot be read (truncated, damaged, incomplete copy)."""


def restore(saver, session, checkpoint: str) -> None:
    """saver.restore(session, checkpoint), with an unreadable checkpoint reported in one line.

    Raises:
      CorruptCheckpointError: the checkpoint's files cannot be read; the message names the
        damaged file, what is wrong and what to do.
    """
    try:
        saver.restore(session, checkpoint)
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
        raise CorruptCheckpointError(describe_unreadable_checkpoint(checkpoint, e)) from None
    except tf.errors.OpError as e:
        if _checkpoint_reads_back(checkpoint):
            raise  # the files are sound: a graph that does not match them, not damage
        raise CorruptCheckpointError(describe_unreadable_checkpoint(checkpoint, e)) from None


def _checkpoint_reads_back(checkpoint: str) -> bool:
    try:
        reader = tf.train.load_checkpoint(checkpoint)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def _first_line(error: Exception) -> str:
    """TF's own reason, without its graph-node and stack-trace lines."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    skip = ("Graph execution error", "Detected at node", "File \"", "Node:", "[[", "Original",
            "Restoring from checkpoint failed")
    reasons = [line for line in lines if not line.startswith(skip)]
    return (reasons or lines or [type(error).__name__])[0][:300]


def describe_unreadable_checkpoint(checkpoint: str, error: Exception) -> str:
    """One message for a checkpoint that failed to restore: which file, what, what to do."""
    index_file = checkpoint + ".index"
    data_files = sorted(glob.glob(glob.escape(checkpoint) + ".data-*"))
    reason = _first_line(error)
    culprit, variable = None, None
    try:
        reader = tf.train.load_checkpoint(checkpoint)
    except Exception as e:  # pylint: disable=broad-except
        culprit, reason = index_file, _first_line(e)
    else:
        for name in sorted(reader.get_variable_to_shape_map()):
            try:
                reader.get_tensor(name)
            except Exception as e:  # pylint: disable=broad-except
                variable, reason = name, _first_line(e)
                break
        culprit = data_files[0] if len(data_files) == 1 else (
            "one of " + ", ".join(data_files) if data_files else checkpoint + ".data-*")
    if "less bytes" in reason or "truncated" in reason.lower():
        reason = f"truncated: {reason}"
    sizes = ", ".join(f"{os.path.basename(f)} {os.path.getsize(f)} bytes"
                      for f in [index_file] + data_files if os.path.exists(f))
    return (f"checkpoint {checkpoint} cannot be read: {culprit} is damaged or incomplete "
            f"({reason}{f'; reading variable {variable!r}' if variable else ''}; files: "
            f"{sizes or 'none'}). Copy the checkpoint again from where it was written, or pass "
            f"--checkpoint with another checkpoint prefix of the model directory")


def latest_checkpoint(model_dir: str, checkpoint: Optional[str] = None) -> str:
    """`checkpoint` if given, else the newest checkpoint prefix in model_dir.

    Raises:
      FileNotFoundError: no checkpoint (train first).
    """
    path = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not path:
        raise FileNotFoundError(f"no checkpoint in {model_dir}; run `dpsr train` first")
    return path
