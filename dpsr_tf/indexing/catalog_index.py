"""`dpsr index`: run the item tower over the whole catalog, then build the FAISS index and,
beside it, the lexical (BM25) index of the item titles.

    embeddings, ids = embed_catalog(model_dir)              # [N, d] float32, N item ids
    manifest = index_catalog(model_dir, "/data/index", IndexBuildConfig("IVF1024,PQ32x4fs"))
    manifest = add_lexical_index("/data/index", layout_dir)  # lexical only, on an existing build

The embeddings are kept beside the index (item_embeddings.npy, row i = line i of
item_ids.txt) for evaluation and for rebuilding with another factory string without the model.
"""
import dataclasses
import os
from typing import List, Optional, Tuple

import numpy as np
from absl import logging

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.indexing import index_builder, index_layout, lexical_index
from dpsr_tf.indexing.lexical_manifest import LexicalConfig

EMBEDDINGS_FILE = "item_embeddings.npy"
EMBEDDING_IDS_FILE = "item_embedding_ids.txt"


def embed_catalog(model_dir: str, *, layout_dir: Optional[str] = None,
                  checkpoint: Optional[str] = None, batch_size: int = 4096,
                  progress_every_s: float = 10.0) -> Tuple[np.ndarray, list]:
    """Item embeddings of every item of the model's layout.

    Returns:
      embeddings [num_items, d] float32 (L2-normalized rows) and the [num_items] item ids.
    """
    cfg, spec = model_dir_lib.load_model_config(model_dir)
    if layout_dir:
        spec = dataclasses.replace(spec, layout_dir=os.path.abspath(layout_dir))
    table = layout_lib.load_item_table(spec, mmap=True)
    last = [0.0]   # seconds at the last progress line

    def progress(done: int, total: int, seconds: float) -> None:
        if seconds - last[0] >= progress_every_s or done == total:
            logging.info("embedded %d/%d items (%.0f items/s)", done, total,
                         done / max(seconds, 1e-9))
            last[0] = seconds
    with CheckpointEmbedder(model_dir, checkpoint, model_config=cfg, layout_spec=spec) as emb:
        out = emb.embed_catalog(table, batch_size=batch_size, chunk=max(batch_size, 65536),
                                progress=progress)
    return out, list(table.ids)


def index_catalog(model_dir: str, output_dir: str,
                  config: index_builder.IndexBuildConfig = index_builder.IndexBuildConfig(),
                  *, layout_dir: Optional[str] = None, checkpoint: Optional[str] = None,
                  batch_size: int = 4096, overwrite: bool = False,
                  lexical: Optional[LexicalConfig] = LexicalConfig()) -> index_layout.IndexManifest:
    """Embeds the catalog with the item tower and builds the index shards in output_dir, and
    the lexical index of the titles beside them unless `lexical` is None."""
    embeddings, ids = embed_catalog(model_dir, layout_dir=layout_dir, checkpoint=checkpoint,
                                    batch_size=batch_size)
    manifest = index_builder.build_index(embeddings, ids, output_dir, config,
                                         overwrite=overwrite)
    np.save(os.path.join(output_dir, EMBEDDINGS_FILE), embeddings)
    index_layout.write_id_map(os.path.join(output_dir, EMBEDDING_IDS_FILE), ids)
    if lexical is not None:
        _, spec = model_dir_lib.load_model_config(model_dir)
        manifest = add_lexical_index(output_dir, layout_dir or spec.layout_dir, lexical)
    return manifest


def add_lexical_index(output_dir: str, layout_dir: str,
                      config: LexicalConfig = LexicalConfig()) -> index_layout.IndexManifest:
    """Builds (or rebuilds) the lexical index of a layout's items (config.fields: titles by
    default) in an existing index build
    directory, over its shards' id maps, and records it in the manifest."""
    manifest = index_layout.read_manifest(output_dir)
    spec = layout_lib.load_layout_spec(layout_dir)
    ids = layout_lib.read_lines(spec.path(layout_lib.ITEM_IDS))
    fields = item_text.resolve_fields(item_text.parse_fields(config.fields), spec.item_features)
    documents = item_text.item_documents(spec, fields)
    lexical = lexical_index.build_lexical_shards(output_dir, manifest, ids, documents, config,
                                                 log=lambda m: logging.info("%s", m),
                                                 fields_text=item_text.fields_spec(fields),
                                                 typed_queries=_logged_train_queries(spec))
    manifest = dataclasses.replace(manifest, lexical=lexical)
    index_layout.write_manifest(output_dir, manifest)
    return manifest


def _logged_train_queries(spec) -> List[str]:
    """The distinct queries of the layout's train split: logged ones only (pseudo-queries have
    a split of their own), and not the eval split's, which are what evaluation asks."""
    texts = layout_lib.load_queries(spec)
    return [texts[r] for r in np.unique(layout_lib.read_records(spec, "train")["query_row"])]


def load_catalog_embeddings(index_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, d] float32, item ids [N]) saved by index_catalog."""
    emb = np.load(os.path.join(index_dir, EMBEDDINGS_FILE), mmap_mode="r")
    ids = index_layout.read_id_map(os.path.join(index_dir, EMBEDDING_IDS_FILE),
                                   expected_count=emb.shape[0])
    return emb, ids


def catalog_embeddings_by_row(index_dir: str, item_ids) -> np.ndarray:
    """[N, d] DPSR item embeddings of an index build, in layout row order."""
    emb, ids = load_catalog_embeddings(index_dir)
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    missing = [i for i in item_ids if i not in row_of]
    if missing:
        raise ValueError(f"{index_dir}: {len(missing)} catalog items have no embedding (e.g. "
                         f"{missing[:3]}); build the index from the same layout")
    return np.asarray(emb, np.float32)[np.array([row_of[i] for i in item_ids], np.int64)]
