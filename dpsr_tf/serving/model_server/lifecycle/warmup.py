"""SavedModel warm-up, in TF Serving's format.

A version may carry `assets.extra/tf_serving_warmup_requests`: a TFRecord file of
tensorflow.serving.PredictionLog records. Before the version is swapped in, each record's
request is replayed (`num_request_iterations` times) through the same code path as live
requests, so the first real request does not pay for lazy initialisation. A failing warm-up
request fails the load, as in TF Serving.
"""
import os
from typing import List

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from dpsr_tf.export.warmup import warmup_path
from dpsr_tf.serving.errors import ServingError

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def read_warmup_records(version_dir: str) -> List["prediction_log_pb2.PredictionLog"]:
    """The PredictionLog records of a version's warm-up file ([] when there is none).

    Raises:
      ServingError(INVALID_ARGUMENT): unreadable TFRecord, a record that is not a
        PredictionLog, or more than MAX_WARMUP_RECORDS records.
    """
    path = warmup_path(version_dir)
    if not os.path.exists(path):
        return []
    records = []
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_WARMUP_RECORDS:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{path}: more than {MAX_WARMUP_RECORDS} warm-up records")
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(raw)
            records.append(log)
    except ServingError:
        raise
    except Exception as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{path}: not a TFRecord file of PredictionLog records: {e}") from e
    return records
