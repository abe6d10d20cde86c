"""Runs one native build of the tokenizer on a sample file and writes what it produced.

Both op libraries (setup.py's and Bazel's) register the same op names, so each is loaded in
its own process: test_bazel_build.py runs this script once per library.

    python tokenize_worker.py op       LIBRARY.so SAMPLES.json OUT.npz
    python tokenize_worker.py pybind11 MODULE.so  SAMPLES.json OUT.npz

SAMPLES.json: {"texts": [base64 of the raw bytes, ...], "configs": [TokenizerConfig JSON, ...]}.
OUT.npz: ids_<i> int64 [N] and splits_<i> int64 [B + 1] for config i; for `op` also
op_defs (the serialized OpDefs of every Dpsr> op the library registered, sorted by name).
"""
import base64
import importlib.util
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from dpsr_tf.tokenization.config import TokenizerConfig  # noqa: E402


def _dpsr_op_defs() -> np.ndarray:
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    buf = pywrap_tf_session.TF_GetAllOpList()
    try:
        ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buf))
    finally:
        pywrap_tf_session.TF_DeleteBuffer(buf)
    defs = sorted((o for o in ops.op if o.name.startswith("Dpsr>")), key=lambda o: o.name)
    return np.array([o.SerializeToString(deterministic=True) for o in defs], dtype=object)


def _run_op(library, texts, configs, out):
    import tensorflow as tf

    ops = tf.load_op_library(library)
    batch = tf.constant(texts, tf.string)
    for i, config in enumerate(configs):
        ids, splits = ops.dpsr_tokenize(
            texts=batch, vocab_file=tf.constant(config.vocab_file or "", tf.string),
            config=config.to_config_string())
        out[f"ids_{i}"], out[f"splits_{i}"] = ids.numpy(), splits.numpy()
    out["op_defs"] = _dpsr_op_defs()


def _run_pybind11(module_path, texts, configs, out):
    spec = importlib.util.spec_from_file_location("_tokenizer", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for i, config in enumerate(configs):
        tokenizer = module.Tokenizer(config.to_config_string(), config.vocab_file or "")
        out[f"ids_{i}"], out[f"splits_{i}"] = tokenizer.tokenize(texts)


def main(argv) -> int:
    if len(argv) != 5 or argv[1] not in ("op", "pybind11"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, library, samples_path, out_path = argv[1:]
    with open(samples_path) as f:
        samples = json.load(f)
    texts = [base64.b64decode(t) for t in samples["texts"]]
    configs = [TokenizerConfig.from_json(c) for c in samples["configs"]]
    out = {}
    (_run_op if kind == "op" else _run_pybind11)(library, texts, configs, out)
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
