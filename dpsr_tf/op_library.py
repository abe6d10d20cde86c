"""Loads the project's TensorFlow op library (dpsr_tf/_dpsr_ops*.so) once.

The library holds every custom op of the project (Dpsr>Tokenize, Dpsr>SpellCorrect, the FAISS
and lexical index ops, Dpsr>MergeHeads). It is built by `make build` (python setup.py build_ext
--inplace).
"""
import functools
import glob
import json
import os

import tensorflow as tf
from absl import logging

_HERE = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """Path of the built op library; raises a clear error when it was not built."""
    found = sorted(glob.glob(os.path.join(_HERE, "_dpsr_ops*.so")))
    if not found:
        raise ImportError(
            f"the DPSR op library is not built (no _dpsr_ops*.so in {_HERE}); "
            "run `make build` in the project root")
    return found[0]


# The instruction sets FAISS's avx2 build is compiled with (tools/build_faiss.py).
_AVX2_CPU_FLAGS = ("avx2", "fma", "f16c", "popcnt")


def faiss_build_info() -> dict:
    """What FAISS the op library links: {faiss_version, debian_source_version, opt_level,
    compile_flags}, from the _dpsr_ops.faiss.json that setup.py writes beside the library
    ({} for a library built without it, e.g. by Bazel)."""
    path = os.path.join(_HERE, "_dpsr_ops.faiss.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _cpu_flags(path: str = "/proc/cpuinfo") -> set:
    """The instruction-set flags of this CPU (empty when unknown), read as
    tools/build_faiss.py reads them to choose the FAISS build (a test ties the two)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_cpu(info: dict, cpu_flags: set) -> str:
    """The startup line for `info` on a CPU with `cpu_flags` ('' when nothing to say).

    Raises:
      ImportError: the library holds FAISS's avx2 build and this CPU lacks an instruction set
        it needs (it would die of an illegal instruction); rebuild here.
    """
    if info.get("opt_level") == "avx2":
        missing = [f for f in _AVX2_CPU_FLAGS if f not in cpu_flags]
        if missing and cpu_flags:
            raise ImportError(
                f"the DPSR op library links FAISS built for AVX2 but this CPU lacks "
                f"{', '.join(missing)}; rebuild it on this machine with `make clean build` "
                "(tools/build_faiss.py then builds FAISS's generic level)")
        return ""
    if info.get("opt_level") == "generic":
        return ("FAISS in the DPSR op library is the generic build (no AVX2 on the build "
                "machine): fast-scan (x4fs) indexes search several times slower than with AVX2")
    return ""


@functools.lru_cache(maxsize=None)
def load():
    """Returns the loaded op module (tf.load_op_library result), loading it on first call.

    Also registers tensorflow-text's ops when it is installed: servables of models with a
    pretrained text encoder tokenize with its FastBertTokenizer (dpsr_tf/tokenization/wordpiece.py).
    """
    path = library_path()
    line = check_cpu(faiss_build_info(), _cpu_flags())
    if line:
        logging.warning(line)
    module = tf.load_op_library(path)
    try:
        import tensorflow_text  # noqa: F401  optional: registers the WordPiece ops on import
    except ImportError:
        pass
    return module
