"""Shared pieces of the rewriting tests: the tiny rewriter and a Flat + BM25 index build over
given titles (what `dpsr index` writes, without a model)."""
import dataclasses
import os

import numpy as np

from dpsr_tf.rewriting.config import RewriterConfig

TINY = RewriterConfig(num_layers=1, d_model=16, num_heads=2, ff_dim=16, query_len=6,
                      title_len=8, batch_size=16, train_steps=30, warmup_steps=5, dropout=0.0)


def train_tiny_rewriter(work_dir: str) -> dict:
    """TINY trained 30 steps on prepare_tiny_layout's pairs in work_dir:
    {"spec", "model_dir", "losses" (train_rewriter's final eval losses), "work"}."""
    from dpsr_tf.rewriting.train import train_rewriter  # pylint: disable=import-outside-toplevel
    from tests.support.tiny_model import prepare_tiny_layout  # pylint: disable=import-outside-toplevel
    spec = prepare_tiny_layout(work_dir)
    model_dir = os.path.join(work_dir, "rewriter")
    losses = train_rewriter(spec.layout_dir, model_dir, TINY, max_units=200, log_every=10,
                            save_every=30, log=lambda _: None)
    return {"spec": spec, "model_dir": model_dir, "losses": losses, "work": work_dir}


def lexical_index_build(directory: str, ids, titles) -> str:
    """One Flat shard of random 4-d embeddings and the lexical index of titles; directory."""
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing import index_builder, index_layout, lexical_index
    emb = np.random.default_rng(0).standard_normal([len(ids), 4]).astype(np.float32)
    manifest = index_builder.build_index(emb, ids, directory,
                                         index_builder.IndexBuildConfig(factory="Flat"))
    lexical = lexical_index.build_lexical_shards(directory, manifest, ids, titles,
                                                 log=lambda m: None)
    index_layout.write_manifest(directory, dataclasses.replace(manifest, lexical=lexical))
    return directory
