"""A SavedModel loaded the TF1 way, as TF Serving loads it: one Session over the "serve"
MetaGraph, signatures called by name with inputs and outputs by alias. Used in the test process
and in fresh processes (tests/support/fresh_python.py), where it imports only TensorFlow and the
op library."""
from typing import Dict, Iterable, Optional

import numpy as np
import tensorflow as tf

from dpsr_tf import op_library


class Tf1Servable:
    """The servable at `path` (a version directory) in its own graph and Session."""

    def __init__(self, path: str):
        op_library.load()
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        with self.session.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def call(self, signature: str, feeds: Dict[str, object],
             outputs: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        """Runs `signature` once: feeds maps input aliases to values; returns the named output
        aliases (None: every output of the signature)."""
        sig = self.meta_graph.signature_def[signature]
        names = sig.outputs if outputs is None else outputs
        return self.session.run({k: sig.outputs[k].name for k in names},
                                {sig.inputs[k].name: v for k, v in feeds.items()})

    def close(self) -> None:
        self.session.close()
