"""Scalar curves of a model directory's TensorBoard event files (training and evaluation).

`dpsr train` writes the chief's summaries to MODEL/events.out.tfevents.* (loss, train/*,
global_step/sec) and the evaluations to MODEL/eval/events.out.tfevents.* (loss, top1, top10,
auc_labeled). Read with tf.compat.v1.train.summary_iterator; no TensorBoard server needed.
"""
import glob
import os
from typing import Dict, List, Tuple

import tensorflow as tf

Curves = Dict[str, List[Tuple[int, float]]]


def _read_dir(directory: str) -> Curves:
    curves: Dict[str, Dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        number = value.simple_value
                    elif value.HasField("tensor") and value.tensor.dtype in (1, 2):  # float/double
                        number = float(tf.make_ndarray(value.tensor).reshape(-1)[0])
                    else:
                        continue
                    # A restarted run rewrites steps: the newest file's value wins.
                    curves.setdefault(value.tag, {})[int(event.step)] = float(number)
        except tf.errors.DataLossError:
            continue  # a file cut by a killed writer: keep what was read
    return {tag: sorted(points.items()) for tag, points in curves.items()}


def read_curves(model_dir: str) -> Dict[str, Curves]:
    """{"train": {tag: [(step, value)] by step}, "eval": {...}} of a model directory.

    Raises:
      FileNotFoundError: the directory has no event file (not trained by `dpsr train`).
    """
    if not glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event file in {model_dir}: train it with "
                                "`dpsr train --model_dir=...` first (summaries are written "
                                "every --save_summary_steps)")
    return {"train": _read_dir(model_dir), "eval": _read_dir(os.path.join(model_dir, "eval"))}
