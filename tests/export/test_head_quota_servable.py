"""A servable exported with a per-head quota (--head_min_share): its dense list equals the
NumPy reference merge (head_merge.merge_heads_quota_np) of each head's brute-force search, and
its `heads` output names the head that found each item."""
import numpy as np

from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.search.head_merge import merge_heads_np, merge_heads_quota_np
from tests.support.tf1_servable import Tf1Servable

QUERIES = ["red lamp", "steel hammer", "blue", "wood screws"]
K = 8


def test_quota_servable_equals_numpy_reference(tiny_history_model, tiny_flat_index, tmp_path):
    path = export_servable(tiny_history_model.model_dir, tiny_flat_index, str(tmp_path / "q"),
                           servable=ServableConfig(hybrid=False, head_min_share=0.5))
    servable = Tf1Servable(path)
    try:
        q = servable.call("query_embedding", {"query": QUERIES}, ["embedding"])["embedding"]
        out = servable.call("serving_default", {"query": QUERIES, "k": K},
                            ["item_ids", "scores", "heads"])
    finally:
        servable.close()
    items, ids = catalog_index.load_catalog_embeddings(tiny_flat_index)
    dots = np.einsum("qmd,nd->qmn", q, items)                      # [Q, m, N]
    order = np.argsort(-dots, axis=2, kind="stable")[:, :, :K]
    scores = np.take_along_axis(dots, order, axis=2)
    want_s, want_rows, want_h = merge_heads_quota_np(scores, order, K, 0.5)
    got_ids = out["item_ids"].astype(str)
    np.testing.assert_allclose(out["scores"], want_s, atol=1e-5)
    for row in range(len(QUERIES)):
        for j, (g, w) in enumerate(zip(got_ids[row], want_rows[row])):
            if g != ids[w]:   # two items tied within float error
                assert abs(out["scores"][row][j] - want_s[row][j]) < 1e-5
        assert out["heads"][row].tolist() == want_h[row].tolist()
    # Each head holds min(4, the items credited to it in the whole merge) of the 8 (an item
    # both heads find is credited to its best score's head).
    owned = merge_heads_np(scores, order, 2 * K)[2]
    # On these queries the quota changes the list (the test tells the two merges apart).
    assert (merge_heads_np(scores, order, K)[1] != want_rows).any()
    for row in range(len(QUERIES)):
        for head in (0, 1):
            assert (out["heads"][row] == head).sum() >= min(4, (owned[row] == head).sum())
