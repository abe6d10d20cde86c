"""Keeping one checkpoint of a finished model directory (`dpsr crossval --prune_checkpoints`).

Training with early stopping keeps every checkpoint the rule may still want (patience + 1
evaluations of them), and each DPSR checkpoint holds the token table with its two Adam slots, so a
cross-validation leaves many large checkpoints that nobody reads again: every fold is evaluated,
indexed and scored from one of them. `prune_to` deletes the others and makes the directory's
checkpoint state name the kept one alone, so `dpsr index`, `dpsr export` and `dpsr evaluate` on that
directory read what the fold's numbers came from.
"""
import os
import re
from typing import List, NamedTuple

import tensorflow as tf

_CHECKPOINT_FILE = re.compile(r"(model\.ckpt-[0-9]+)\.(index|meta|data-[0-9]+-of-[0-9]+)")


class Pruned(NamedTuple):
    kept: str            # the checkpoint prefix kept
    removed: List[str]   # the prefixes whose files were deleted, oldest first
    freed_bytes: int


def prune_to(model_dir: str, keep: str) -> Pruned:
    """Deletes every model.ckpt-N of `model_dir` but `keep` and points the state at `keep`.

    Args:
      model_dir: an Estimator model directory.
      keep: the checkpoint prefix to keep (<model_dir>/model.ckpt-N, as the state names it).

    Raises:
      ValueError: `keep` is not a complete checkpoint of `model_dir` (nothing is deleted).
    """
    model_dir = os.path.abspath(model_dir)
    keep = os.path.abspath(keep)
    if os.path.dirname(keep) != model_dir or not _CHECKPOINT_FILE.fullmatch(
            os.path.basename(keep) + ".index"):
        raise ValueError(f"checkpoint {keep} is not a model.ckpt-N of {model_dir}")
    if not os.path.isfile(keep + ".index") or not tf.io.gfile.glob(keep + ".data-*"):
        raise ValueError(f"checkpoint {keep} is not on disk (no {os.path.basename(keep)}.index "
                         f"or .data-* in {model_dir}); nothing was pruned")
    by_prefix = {}
    for name in os.listdir(model_dir):
        match = _CHECKPOINT_FILE.fullmatch(name)
        if match and os.path.join(model_dir, match.group(1)) != keep:
            by_prefix.setdefault(match.group(1), []).append(name)
    # The state first: a crash between the two steps leaves a state that names files on disk.
    tf.compat.v1.train.update_checkpoint_state(model_dir, keep,
                                               all_model_checkpoint_paths=[keep])
    freed = 0
    for names in by_prefix.values():
        for name in names:
            path = os.path.join(model_dir, name)
            freed += os.path.getsize(path)
            os.remove(path)
    removed = sorted(by_prefix, key=lambda p: int(p.rsplit("-", 1)[1]))
    return Pruned(keep, [os.path.join(model_dir, p) for p in removed], freed)
