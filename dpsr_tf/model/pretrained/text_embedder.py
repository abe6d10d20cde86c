"""A pretrained sentence encoder over Python strings, in its own graph and session: the
zero-shot baseline's embeddings and a teacher's cached catalog embeddings.

    with TextEmbedder("") as embedder:                 # "" = the installed all-MiniLM-L6-v2
        vectors = embedder.embed(["cordless drill", ...])   # [n, H] float32, unit rows
"""
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.encoder import SentenceEncoder


class TextEmbedder:
    """The encoder of `pretrained_dir` ("" = files.default_pretrained_dir()), its weights
    loaded, ready to embed texts (cut to max_seq_length tokens when given, below the model's
    own)."""

    def __init__(self, pretrained_dir: str = "", max_seq_length: Optional[int] = None):
        self.model = files.read_pretrained(pretrained_dir or files.default_pretrained_dir())
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._texts = tf.compat.v1.placeholder(tf.string, [None], name="texts")
            encoder = SentenceEncoder(self.model, trainable_layers=0,
                                      max_seq_length=max_seq_length)
            self._embeddings = encoder(self._texts)
            self.session = tf.compat.v1.Session(graph=self.graph)
            encoder.initialize(self.session)

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def embed(self, texts: Sequence[str], batch_size: int = 128,
              log: Optional[Callable[[str], None]] = None, every_s: float = 30.0) -> np.ndarray:
        """[n, H] float32 L2-normalized embeddings of texts, in their order.

        Texts are batched by length (shortest first) so a batch pads little; log gets a
        progress line every `every_s` seconds.
        """
        out = np.zeros([len(texts), self.dimension], np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        start = last = time.monotonic()
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            batch = np.array([texts[r].encode("utf-8") for r in rows], dtype=object)
            out[rows] = self.session.run(self._embeddings, {self._texts: batch})
            now = time.monotonic()
            if log is not None and (now - last >= every_s or lo + batch_size >= len(order)):
                done = min(lo + batch_size, len(order))
                log(f"  embedded {done}/{len(order)} texts with {self.model.directory} "
                    f"({done / max(now - start, 1e-9):.0f}/s)")
                last = now
        return out

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
