"""`dpsr prepare --graph`: the click graph's tables against a numpy brute force over the train
records, no edge for queries seen only in evaluation, bounded streaming counts, and the input
pipeline's in-graph join (with the training pair's own edge hidden)."""
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pipeline
from dpsr_tf.data.graph import GraphConfig, build_graph, load_graph
from dpsr_tf.data.graph.topn import TopNeighbours

K, K2 = 4, 5


@pytest.fixture(scope="module")
def graph_layout(tiny_layout, tmp_path_factory):
    """A copy of tiny_layout with a graph built in small chunks (several merges)."""
    out = str(tmp_path_factory.mktemp("graph") / "layout")
    shutil.copytree(tiny_layout, out)
    build_graph(out, GraphConfig(neighbors=K, two_hop=K2, chunk_records=500),
                log=lambda _: None)
    spec = layout_lib.load_layout_spec(out)
    return spec, load_graph(spec)


def _clicks(spec):
    rec = layout_lib.read_records(spec, "train")
    rec = rec[rec["label_kind"] != 2]
    pairs = {}
    for q, i in zip(rec["query_row"].tolist(), rec["item_row"].tolist()):
        pairs[(q, i)] = pairs.get((q, i), 0) + 1
    return pairs


def test_query_lists_are_the_most_clicked_items(graph_layout):
    spec, g = graph_layout
    pairs = _clicks(spec)
    base = g.meta.item_base
    train_queries = sorted({q for q, _ in pairs})
    assert g.meta.num_query_nodes == len(train_queries)
    for q in train_queries[:200]:
        assert g.query_nodes[q] == train_queries.index(q) + 1
        clicked = sorted(((c, i) for (qq, i), c in pairs.items() if qq == q),
                         key=lambda ci: (-ci[0], ci[1]))[:K]
        got = [(int(w), int(n) - base) for n, w in zip(g.hop["query"]["hop1"][q],
                                                     g.weight["query"]["hop1"][q]) if n > 0]
        assert got == [(c, i) for c, i in clicked]


def test_queries_seen_only_in_evaluation_get_no_node_and_no_edge(graph_layout):
    spec, g = graph_layout
    train_queries = {q for q, _ in _clicks(spec)}
    eval_only = sorted(set(eval_set_lib.load_eval_set(spec).query_rows.tolist()) - train_queries)
    assert eval_only, "the tiny layout must have eval-only queries"
    for side_rows in (eval_only,):
        assert (g.query_nodes[side_rows] == 0).all()
        for hop in ("hop1", "hop2"):
            assert (g.hop["query"][hop][side_rows] == 0).all()
    # No list anywhere holds a node that is not a training query, item or attribute value.
    valid_query_nodes = set(g.query_nodes[sorted(train_queries)].tolist())
    for side in ("query", "item"):
        for hop in ("hop1", "hop2"):
            nodes = g.hop[side][hop]
            queries = nodes[(nodes > 0) & (nodes < g.meta.item_base)]
            assert set(queries.tolist()) <= valid_query_nodes


def test_item_lists_hold_every_attribute_then_the_most_clicking_queries(graph_layout):
    spec, g = graph_layout
    pairs = _clicks(spec)
    items = layout_lib.load_item_table(spec)
    names = layout_lib.feature_columns(spec, "item")
    for row in range(0, spec.num_items, 7):
        attrs = [g.meta.attribute_bases[n] + int(items.features[row, j]) - 1
                 for j, n in enumerate(names) if items.features[row, j] > 0]
        clicks = sorted(((c, int(g.query_nodes[q])) for (q, i), c in pairs.items() if i == row),
                        key=lambda cn: (-cn[0], cn[1]))
        expected = attrs + [n for _, n in clicks][:K + len(names) - len(attrs)]
        got = [int(n) for n in g.hop["item"]["hop1"][row] if n > 0]
        assert sorted(got[:len(attrs)]) == sorted(attrs)
        assert got[len(attrs):] == expected[len(attrs):]


def test_node_adjacency_holds_every_nodes_own_list(graph_layout):
    spec, g = graph_layout
    ids = np.load(spec.path("graph/node_hop1.npy"))
    weights = np.load(spec.path("graph/node_hop1_weights.npy"))
    assert ids.shape == (g.meta.num_nodes, g.hop["item"]["hop1"].shape[1])
    assert ids.dtype == np.int32 and weights.dtype == np.float32
    assert (ids[0] == 0).all() and (weights[0] == 0).all()
    rows = np.flatnonzero(g.query_nodes)
    np.testing.assert_array_equal(ids[g.query_nodes[rows]], g.hop["query"]["hop1"][rows])
    np.testing.assert_array_equal(weights[g.query_nodes[rows]], g.weight["query"]["hop1"][rows])
    items = g.meta.item_base + np.arange(spec.num_items)
    np.testing.assert_array_equal(ids[items], g.hop["item"]["hop1"])
    np.testing.assert_array_equal(weights[items], g.weight["item"]["hop1"])
    # An attribute value's list: its items by train clicks + 1, ties to the smaller item row.
    clicks = np.zeros(spec.num_items)
    for (_, i), c in _clicks(spec).items():
        clicks[i] += c
    table = layout_lib.load_item_table(spec)
    names = layout_lib.feature_columns(spec, "item")
    checked = 0
    for j, name in enumerate(names):
        for value in range(1, spec.item_features[name]):
            having = np.flatnonzero(table.features[:, j] == value)
            order = sorted(having, key=lambda r: (-clicks[r], r))[:K]
            node = g.meta.attribute_bases[name] + value - 1
            got = [(int(n) - g.meta.item_base, float(w))
                   for n, w in zip(ids[node], weights[node]) if n > 0]
            assert got == [(int(r), clicks[r] + 1.0) for r in order], (name, value)
            checked += len(order) > 1
    assert checked, "the tiny layout must have attribute values shared by several items"


def test_two_hop_lists_are_the_top_two_step_walks(graph_layout):
    spec, g = graph_layout
    # Rebuild the full node adjacency from the ego tables where possible: brute force the
    # two-hop of queries whose neighbours are items (item lists are stored).
    base = g.meta.item_base
    for q in np.flatnonzero(g.query_nodes > 0)[:40]:
        ego = int(g.query_nodes[q])
        n1, w1 = g.hop["query"]["hop1"][q], g.weight["query"]["hop1"][q]
        p1 = w1 / w1.sum()
        scores = {}
        for node, p in zip(n1, p1):
            if node <= 0:
                continue
            n2, w2 = g.hop["item"]["hop1"][node - base], g.weight["item"]["hop1"][node - base]
            for node2, p2 in zip(n2, w2 / w2.sum()):
                if node2 > 0 and node2 != ego:
                    scores[int(node2)] = scores.get(int(node2), 0.0) + p * p2
        top = sorted(scores.items(), key=lambda nw: (-nw[1], nw[0]))[:K2]
        got = [(int(n), float(w)) for n, w in zip(g.hop["query"]["hop2"][q],
                                                  g.weight["query"]["hop2"][q]) if n > 0]
        assert [n for n, _ in got] == [n for n, _ in top]
        np.testing.assert_allclose([w for _, w in got], [w for _, w in top], rtol=1e-5)


def test_streaming_counts_equal_exact_counts_within_capacity():
    rng = np.random.RandomState(3)
    src, dst = rng.randint(0, 50, 4000), rng.randint(0, 8, 4000)
    summary = TopNeighbours(dst_space=8, capacity=8)   # >= distinct neighbours: exact
    for lo in range(0, 4000, 300):
        summary.add(src[lo:lo + 300], dst[lo:lo + 300], np.ones(len(src[lo:lo + 300])))
    ids, counts = summary.top(50, 3)
    exact = np.zeros([50, 8])
    np.add.at(exact, (src, dst), 1)
    for s in range(50):
        order = sorted(range(8), key=lambda d: (-exact[s, d], d))[:3]
        assert ids[s].tolist() == order
        assert counts[s].tolist() == [exact[s, d] for d in order]
    assert len(summary.src) <= 50 * 8


def test_pipeline_joins_the_lists_and_hides_the_pairs_own_edge(graph_layout):
    spec, g = graph_layout
    ds = pipeline.make_train_input_fn(spec.layout_dir, batch_size=64, shuffle_buffer=0,
                                      seed=1, num_random_negatives=8)()
    batch = next(iter(ds))
    q, i = batch["query_row"].numpy(), batch["item_row"].numpy()
    item_node = g.meta.item_base + i
    query_node = g.query_nodes[q]
    expected_q = np.where(g.hop["query"]["hop1"][q] == item_node[:, None], 0,
                          g.hop["query"]["hop1"][q])
    expected_i = np.where((g.hop["item"]["hop1"][i] == query_node[:, None]) &
                          (query_node[:, None] > 0), 0, g.hop["item"]["hop1"][i])
    np.testing.assert_array_equal(batch["query_graph_hop1"].numpy(), expected_q)
    np.testing.assert_array_equal(batch["item_graph_hop1"].numpy(), expected_i)
    assert (batch["query_graph_hop1"].numpy() != item_node[:, None]).all()
    neg = batch["neg_item_row"].numpy()
    np.testing.assert_array_equal(batch["neg_item_graph_hop2"].numpy(),
                                  g.hop["item"]["hop2"][neg])
    assert batch["query_graph_hop2_weight"].dtype == tf.float32
