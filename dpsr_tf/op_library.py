"""Loads the project's TensorFlow op library (dpsr_tf/_dpsr_ops*.so) once.

The library holds every custom op of the project (Dpsr>Tokenize now, the FAISS ops of
export/ later). It is built by `make build` (python setup.py build_ext --inplace).
"""
import functools
import glob
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """Path of the built op library; raises a clear error when it was not built."""
    found = sorted(glob.glob(os.path.join(_HERE, "_dpsr_ops*.so")))
    if not found:
        raise ImportError(
            f"the DPSR op library is not built (no _dpsr_ops*.so in {_HERE}); "
            "run `make build` in the project root")
    return found[0]


@functools.lru_cache(maxsize=None)
def load():
    """Returns the loaded op module (tf.load_op_library result), loading it on first call."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.load_op_library(library_path())
