"""A vocabulary-mode model's servable after a move: Dpsr>Tokenize opens its vocabulary on every
run, so the servable must hand it the moved asset's path (servable_graph.run_time_path), not the
export's staging path."""
import os
import shutil

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.prepare import PrepareConfig, prepare
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.tokenization import TokenizerConfig
from tests.support import tiny_model
from tests.support.fresh_python import run_fresh


def test_vocabulary_mode_servable_tokenizes_with_its_moved_vocabulary(tmp_path):
    paths = tiny_model.write_tiny_dataset(str(tmp_path / "tsv"))
    spec = prepare(PrepareConfig(
        items=paths["items"], users=paths["users"], interactions=paths["interactions"],
        output=str(tmp_path / "layout"), tokenizer=TokenizerConfig(num_oov_buckets=16),
        build_vocab=True, vocab_min_count=1, history_length=4, seed=0), log=lambda _: None)
    assert spec.tokenizer_config.vocab_file, "prepare should have built a vocabulary"
    model_dir = str(tmp_path / "model")
    tiny_model.train_tiny_history_model(spec, model_dir, 20)
    index_dir = str(tmp_path / "index")
    catalog_index.index_catalog(model_dir, index_dir, IndexBuildConfig(factory="Flat"))
    built, _ = catalog_index.load_catalog_embeddings(index_dir)
    items = layout_lib.load_item_table(spec)
    path = export_servable(model_dir, index_dir, str(tmp_path / "a" / "dpsr"),
                           servable=ServableConfig(default_k=5, max_k=50, hybrid=False))
    moved = str(tmp_path / "b")
    shutil.move(str(tmp_path / "a"), moved)
    # Nothing outside the servable: the layout (and its vocabulary) goes too.
    shutil.move(str(tmp_path / "layout"), str(tmp_path / "layout_gone"))
    feeds = {"item_title": items.titles}
    feeds.update({f"item_{n}": [items.vocabularies[n][i] for i in items.feature(n)]
                  for n in spec.item_features})
    got = run_fresh(f"""
    import json, numpy as np
    from tests.support.tf1_servable import Tf1Servable
    call = Tf1Servable({os.path.join(moved, "dpsr", os.path.basename(path))!r}).call
    items = call("item_embedding", {feeds!r}, ["embedding"])["embedding"]
    out = call("serving_default", {{"query": ["cat3 brand5"], "k": 5}}, ["item_ids"])
    print(json.dumps({{"items": items.tolist(), "ids": out["item_ids"].astype(str).tolist()}}))
    """)
    # The item tower over in-graph tokens equals the index built from prepare's vocabulary ids.
    np.testing.assert_allclose(np.array(got["items"], np.float32), built, atol=1e-5)
    assert len(got["ids"][0]) == 5 and all(i.startswith("item") for i in got["ids"][0])
