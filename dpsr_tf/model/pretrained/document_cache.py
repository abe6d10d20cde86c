"""A pretrained encoder's embeddings of a layout's item documents, cached beside the layout.

    vectors = document_embeddings(spec, embedder, titles)    # [N, H] float32, unit rows

Embedding a catalog's titles is the slow part of the zero-shot baseline (`dpsr evaluate
--zero_shot`) and of a pretrained teacher (`dpsr train --teacher_dir=ENCODER`); both read them
through here, so a layout's titles are embedded once per encoder. Written to
<layout>/pretrained_embeddings/<key>.npy, key = the encoder's files (config.json, vocab.txt and
the weights, by content: a fine-tuned encoder written again into another build directory reuses
its embeddings) and the documents' texts.
"""
import hashlib
import os
from typing import Callable, List

import numpy as np

from dpsr_tf.model.pretrained import files

CACHE_DIR = "pretrained_embeddings"


def cache_key(model: files.PretrainedModel, documents: List[str]) -> str:
    """16 hex digits naming the embeddings of `documents` by `model`."""
    digest = hashlib.sha256()
    for name in (files.CONFIG_FILE, files.VOCAB_FILE, files.WEIGHTS_FILE):
        # About 0.2 s for MiniLM's 90 MB, against minutes to embed a catalog again.
        with open(os.path.join(model.directory, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    for doc in documents:
        digest.update(doc.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def document_embeddings(spec, embedder, documents: List[str],
                        log: Callable[[str], None] = print) -> np.ndarray:
    """[N, H] float32 embeddings of the item documents by a TextEmbedder, from the layout's
    cache when an earlier run made them (written there when the layout directory is writable).

    Args:
      spec: the LayoutSpec the documents belong to (the cache lives in its directory).
      embedder: a pretrained/text_embedder.TextEmbedder.
      documents: [N] texts, one per item row.
    """
    path = spec.path(os.path.join(CACHE_DIR, cache_key(embedder.model, documents) + ".npy"))
    if os.path.isfile(path):
        cached = np.load(path)
        if cached.shape == (len(documents), embedder.dimension):
            log(f"  reusing the encoder's embeddings of {len(documents):,} item documents "
                f"({path})")
            return cached
    vectors = embedder.embed(documents, log=log)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, vectors)
        os.replace(tmp, path)
    except OSError as e:
        log(f"  (not caching the catalog's embeddings: {e})")
    return vectors
