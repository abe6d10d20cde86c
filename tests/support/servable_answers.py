"""Every signature of a servable run on fixed inputs, for comparing two servables (or one
servable against answers recorded when it was written).

    python tests/support/servable_answers.py VERSION_DIR OUT.npz   # record a servable's answers
"""
import os
import sys
from typing import Dict

import numpy as np

QUERIES = [b"red shoe", b"lamp", b"xyz widget"]


def _feed_value(alias: str, batch: int, dim: int):
    """The fixed value of a signature input (one row per query)."""
    if alias in ("query", "rerank_query"):
        return np.array(QUERIES[:batch])
    if alias == "item_title":
        return np.array([b"red shoe", b"lamp", b"a"][:batch])
    if alias == "k":
        return np.int32(7)
    if alias == "feedback_direction":
        return np.linspace(-1, 1, batch * dim, dtype=np.float32).reshape(batch, dim)
    if alias in ("user_history", "item_ids"):
        return np.array([[b""]] * batch)
    return np.array([b""] * batch)   # user_<feature>, item_<feature>: unknown


def answers(version_dir: str) -> Dict[str, np.ndarray]:
    """"signature/output" -> value of every output of every signature of the servable."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dpsr_tf import op_library  # pylint: disable=import-outside-toplevel
    op_library.load()
    out = {}
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
        for name, signature in sorted(meta.signature_def.items()):
            dim = 0
            if "feedback_direction" in signature.inputs:
                dim = signature.inputs["feedback_direction"].tensor_shape.dim[1].size
            feed = {graph.get_tensor_by_name(info.name): _feed_value(alias, len(QUERIES), dim)
                    for alias, info in signature.inputs.items()}
            fetch = {alias: graph.get_tensor_by_name(info.name)
                     for alias, info in signature.outputs.items()}
            for alias, value in session.run(fetch, feed).items():
                out[f"{name}/{alias}"] = value
    return out


if __name__ == "__main__":
    version, target = sys.argv[1:3]
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    np.savez(target, **answers(version))
