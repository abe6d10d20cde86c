"""A SearchGCN servable ranks as `dpsr evaluate` does: for a query with a node in the click graph
(its neighbour lists looked up by text inside the servable) and for one seen only in evaluation
(the text tower alone), the served top k equals the ranking of `dpsr evaluate --served` (each
head against every item, best head score) over the checkpoint's embeddings, with the query lists
evaluation joins by query row. Both neighbourhoods: the fixed lists, and the sampled two-layer
model (served with its top-N by weight, its node adjacency restored from the checkpoint)."""
import os

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import GraphConfig, build_graph, load_graph
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.embedder import CheckpointEmbedder
from tests.support.tf1_servable import Tf1Servable
from tests.support.tiny_model import prepare_tiny_layout
from dpsr_tf.tokenization import Tokenizer
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig

K = 10


@pytest.fixture(scope="module", params=["fixed", "sampled"])
def gcn(tmp_path_factory, request):
    work = tmp_path_factory.mktemp("searchgcn")
    spec = prepare_tiny_layout(str(work))
    build_graph(spec.layout_dir, GraphConfig(neighbors=4, two_hop=4), log=lambda _: None)
    model_dir = str(work / "model")
    cfg = ModelConfig(num_heads=2, embedding_dim=16, token_embedding_dim=16,
                      feature_embedding_dim=4, item_hidden_units=(32,),
                      query_hidden_units=(32,), query_projection_dim=16, tower="searchgcn",
                      graph_neighbourhood=request.param, graph_layers=2, graph_fanout=3)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(cfg, TrainConfig(
        layout_dir=spec.layout_dir, model_dir=model_dir, batch_size=32, train_steps=60,
        save_checkpoints_steps=60, eval_random_negatives=20, seed=0))
    index_dir = str(work / "index")
    catalog_index.index_catalog(model_dir, index_dir, IndexBuildConfig(factory="Flat"))
    path = export_servable(model_dir, index_dir, str(work / "export"),
                           servable=ServableConfig(default_k=K, max_k=50, hybrid=False))
    return {"spec": spec, "model_dir": model_dir, "version_dir": path}


def _rows(spec):
    """(a query row with a graph node, a query row of the eval split without one)."""
    graph = load_graph(spec)
    eval_rows = set(eval_set_lib.load_eval_set(spec).query_rows.tolist())
    in_graph = int(np.flatnonzero(graph.query_nodes > 0)[0])
    unseen = next(r for r in sorted(eval_rows) if graph.query_nodes[r] == 0)
    return in_graph, unseen


def test_served_top_k_equals_the_evaluation_ranking_in_and_out_of_the_graph(gcn):
    spec = gcn["spec"]
    rows = np.asarray(_rows(spec), np.int64)
    texts = [layout_lib.load_queries(spec)[r] for r in rows]
    items = layout_lib.load_item_table(spec)
    ids = np.asarray(layout_lib.load_item_ids(spec))
    with CheckpointEmbedder(gcn["model_dir"]) as emb:
        item_emb = emb.embed_items(items.token_ids, items.token_splits,
                                   {n: items.feature(n) for n in spec.item_features})
        values, splits = Tokenizer(spec.tokenizer_config).tokenize(texts)
        with_graph = emb.embed_queries(values, splits, query_rows=rows)
        text_only = emb.embed_queries(values, splits)
    # The graph changes the in-graph query only (it has neighbours; the unseen one has none).
    assert np.abs(with_graph[0] - text_only[0]).max() > 1e-4
    np.testing.assert_allclose(with_graph[1], text_only[1], atol=1e-6)
    # `dpsr evaluate --served`'s ranking: each head searched, an item's best head score.
    scores = np.einsum("qmd,nd->qmn", with_graph, item_emb).max(axis=1)
    expected = [ids[np.argsort(-s, kind="stable")[:K]].tolist() for s in scores]

    servable = Tf1Servable(gcn["version_dir"])
    got = servable.call("serving_default", {"query": texts}, ["item_ids"])["item_ids"]
    served_query = servable.call("query_embedding", {"query": texts}, ["embedding"])["embedding"]
    servable.close()
    np.testing.assert_allclose(served_query, with_graph, atol=1e-5)
    for want, have in zip(expected, got.astype(str).tolist()):
        assert have == want
