"""TF Serving warm-up records: assets.extra/tf_serving_warmup_requests (the one writer).

A model server replays these Predict requests after loading a version and before it takes
traffic, so the first real query does not pay for lazy initialisation (index pages, kernels).
The format is TF Serving's: a TFRecord file of tensorflow.serving.PredictionLog protos (read
back by dpsr_tf/serving/model_server/lifecycle/warmup.py, which takes the path from warmup_path
here).
"""
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_path(version_dir: str) -> str:
    """<version_dir>/assets.extra/tf_serving_warmup_requests."""
    return os.path.join(version_dir, WARMUP_DIR, WARMUP_FILE)


def write_warmup_requests(export_dir: str, requests: Sequence[Mapping[str, np.ndarray]],
                          signature_name: str = "serving_default") -> str:
    """Writes one PredictionLog per request into <export_dir>/assets.extra/ (replacing it).

    Args:
      export_dir: the SavedModel version directory.
      requests: each a dict input name -> numpy array (e.g. {"query": np.array([b"drill"])}).
      signature_name: the signature the requests call.

    Returns:
      The path of the written file.
    """
    path = warmup_path(export_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature_name))
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path

