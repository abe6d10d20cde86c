"""Which kind of servable a version directory becomes: a SavedModel session or a TFLite model."""
import os

from dpsr_tf.serving.model_server.lifecycle.servable import SavedModelServable, SessionOptions
from dpsr_tf.serving.model_server.lifecycle.tflite_servable import TfLiteServable, serves_tflite


def new_servable(name: str, version: int, path: str, options: SessionOptions):
    """An unloaded servable for one version directory (call `load()` on it).

    Returns a TfLiteServable when the directory's model.tflite is served (see
    tflite_servable.serves_tflite), else a SavedModelServable.
    """
    if serves_tflite(path, options.prefer_tflite_model):
        pools = options.num_tflite_interpreters or os.cpu_count() or 1
        return TfLiteServable(name, version, path, max_interpreters=pools,
                              num_threads=options.intra_op_parallelism or None)
    return SavedModelServable(name, version, path, options)
