"""Builds the click graph of a prepared layout from its train records (`dpsr prepare --graph`).

Edges: query-item with the number of positive train records of the pair (clicks); item-attribute
for every categorical item feature value (brand, shop, category levels, ...). Only the "train"
split is read (never eval, never catalog pseudo-queries), so queries seen only in evaluation get
no node and no edges. For every node the top `neighbors` neighbours by weight are kept (the
paper aggregates the most-clicked neighbours, not a uniform sample); an item keeps all its
attribute nodes and its `neighbors` most-clicking queries (hop1 tables are neighbors + number of
item features wide); an attribute node keeps its most-clicked items. The
two-hop list of a query or item holds the `two_hop` nodes with the largest two-step random-walk
probability over those top lists (itself excluded). The per-node lists themselves are kept too
(graph/node_hop1*.npy), for the sampled model's second convolution.

Memory is bounded by the node count: the records are memory-mapped and read in chunks, and the
click counts are kept in TopNeighbours summaries of `capacity` neighbours per node.
"""
import dataclasses
import os
import resource
import shutil
import time
from typing import Callable, Dict, Iterable, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import tables as tables_lib
from dpsr_tf.data.graph.topn import TopNeighbours, aggregate, rows_to_matrix, top_per_source

_ATTRIBUTE_FIRST = 1e15   # sort key offset: an item's attribute edges outrank its clicks


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """neighbors: one-hop neighbours kept per node; two_hop: two-hop nodes kept per query /
    item; capacity_factor: the streaming counters keep capacity_factor * neighbors candidates
    per node; chunk_records: records aggregated per step."""

    neighbors: int = 10
    two_hop: int = 10
    capacity_factor: int = 4
    chunk_records: int = 1 << 20

    def validate(self):
        for name in ("neighbors", "two_hop", "capacity_factor", "chunk_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"graph {name} must be >= 1, got {getattr(self, name)}")


def _train_chunks(spec, chunk: int):
    """(query_row, item_row) int64 arrays of the positive train records, chunk by chunk."""
    for rel in spec.record_files.get("train", []):
        path = spec.path(rel)
        size = os.path.getsize(path) - layout_lib.RECORD_HEADER_BYTES
        n = size // layout_lib.RECORD_DTYPE.itemsize
        if n == 0:
            continue
        records = np.memmap(path, dtype=layout_lib.RECORD_DTYPE, mode="r",
                            offset=layout_lib.RECORD_HEADER_BYTES, shape=(n,))
        for lo in range(0, n, chunk):
            part = records[lo:lo + chunk]
            positive = part["label_kind"] != 2
            yield (part["query_row"][positive].astype(np.int64),
                   part["item_row"][positive].astype(np.int64))


def _place(adj_ids, adj_w, nodes, ids, weights):
    """Writes per-row neighbour lists (ids -1 = none) into the node adjacency."""
    valid = ids >= 0
    adj_ids[nodes] = np.where(valid, ids, 0)
    adj_w[nodes] = np.where(valid, weights, 0.0)


def _item_lists(features, names, i2q: TopNeighbours, query_node, bases, k):
    """Each item's attribute nodes (weight 1) then its most-clicking query nodes:
    (item row, node, weight) sorted by row."""
    src, dst, key, weight = [], [], [], []
    for j, name in enumerate(names):
        values = features[:, j].astype(np.int64)
        rows = np.flatnonzero(values > 0)
        src.append(rows)
        dst.append(bases[name] + values[rows] - 1)
        key.append(np.full(len(rows), _ATTRIBUTE_FIRST))
        weight.append(np.ones(len(rows)))
    src.append(i2q.src)
    dst.append(query_node[i2q.dst])
    key.append(i2q.count)
    weight.append(i2q.count)
    src, dst, key, weight = (np.concatenate(a) for a in (src, dst, key, weight))
    # top_per_source sorts by key; the weight rides along through the same permutation.
    order = np.lexsort((dst, -key, src))
    src, dst, weight = src[order], dst[order], weight[order]
    # Ranking by -position keeps that order; the kept positions give back the weights.
    kept_src, kept_dst, neg_position = top_per_source(
        src, dst, -np.arange(len(src), dtype=np.float64), k)
    return kept_src, kept_dst, weight[(-neg_position).astype(np.int64)]


def _two_hop(adj_ids, adj_w, egos, k, block=20000):
    """[len(egos), k] two-hop nodes (0 = none) and their two-step walk probabilities."""
    norm = adj_w / np.maximum(adj_w.sum(axis=1, keepdims=True), 1e-12)
    out_ids = np.zeros([len(egos), k], np.int32)
    out_w = np.zeros([len(egos), k], np.float32)
    for lo in range(0, len(egos), block):
        ego = egos[lo:lo + block]
        first = adj_ids[ego]                                    # [b, K]
        second = adj_ids[first]                                 # [b, K, K]
        prob = norm[ego][:, :, None] * norm[first]              # [b, K, K]
        row = np.broadcast_to(np.arange(len(ego))[:, None, None], second.shape)
        valid = (second > 0) & (prob > 0) & (second != ego[:, None, None])
        s, d, p = aggregate(row[valid], second[valid], prob[valid], adj_ids.shape[0])
        s, d, p = top_per_source(s, d, p, k)
        ids, w = rows_to_matrix(s, d, p, len(ego), k)
        out_ids[lo:lo + len(ego)] = np.maximum(ids, 0)
        out_w[lo:lo + len(ego)] = w
    return out_ids, out_w


def build_graph(layout_dir: str, config: GraphConfig = GraphConfig(),
                log: Callable[[str], None] = print) -> tables_lib.GraphMeta:
    """Writes <layout_dir>/graph/ (tables.py) from the layout's train records; returns its meta.

    Replaces an existing graph/ of the layout. Raises ValueError when the layout has no train
    records with positives.
    """
    config.validate()
    start = time.monotonic()
    spec = layout_lib.load_layout_spec(layout_dir)
    names = layout_lib.feature_columns(spec, "item")
    items = layout_lib.load_item_table(spec, mmap=True)
    try:
        meta, arrays = graph_tables(_train_chunks(spec, config.chunk_records), spec.num_queries,
                                    spec.num_items, items.features,
                                    {n: int(spec.item_features[n]) for n in names}, config, log)
    except ValueError as e:
        raise ValueError(f"{spec.layout_dir}: {e}") from None
    tmp = spec.path(tables_lib.GRAPH_DIR) + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, value in arrays.items():
        np.save(os.path.join(tmp, name), np.ascontiguousarray(value))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        f.write(meta.to_json())
    final = spec.path(tables_lib.GRAPH_DIR)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log(f"graph: wrote {final} in {time.monotonic() - start:.1f} s "
        f"(peak RSS {meta.counts['peak_rss_mb']} MB)")
    return meta


def graph_tables(chunks: Iterable[Tuple[np.ndarray, np.ndarray]], nq: int, ni: int,
                 item_features: np.ndarray, feature_sizes: Dict[str, int],
                 config: GraphConfig = GraphConfig(), log: Callable[[str], None] = print):
    """The graph of a stream of clicks, without files (build_graph writes it).

    Args:
      chunks: (query rows, item rows) int64 arrays, one pair per click, chunk by chunk.
      nq, ni: numbers of query and item rows.
      item_features: [ni, F] categorical value ids (0 = unknown), columns in feature_sizes order.
      feature_sizes: feature name -> vocabulary size (ids 0..size-1), in column order.

    Returns:
      (GraphMeta, {file name in graph/: array}).
    """
    config.validate()
    start = time.monotonic()
    k = config.neighbors
    capacity = config.capacity_factor * k
    q2i, i2q = TopNeighbours(ni, capacity), TopNeighbours(nq, capacity)
    item_clicks = np.zeros([ni], np.float64)
    clicks = 0
    for qr, ir in chunks:
        ones = np.ones(len(qr))
        q2i.add(qr, ir, ones)
        i2q.add(ir, qr, ones)
        item_clicks += np.bincount(ir, minlength=ni)
        clicks += len(qr)
        log(f"graph: {clicks:,} clicks counted ({time.monotonic() - start:.1f} s)")
    if clicks == 0:
        raise ValueError("no positive train records; the click graph needs a train split with "
                         "clicks or positive labels")

    # Node ids (tables.py).
    query_rows = np.unique(q2i.src)
    query_node = np.zeros([nq], np.int64)
    query_node[query_rows] = np.arange(1, len(query_rows) + 1)
    item_base = 1 + len(query_rows)
    names = list(feature_sizes)
    bases, nxt = {}, item_base + ni
    for name in names:
        bases[name] = nxt
        nxt += max(0, int(feature_sizes[name]) - 1)
    num_nodes = nxt

    # Items keep every attribute node and still up to `neighbors` queries.
    width = k + len(bases)
    adj_ids = np.zeros([num_nodes, width], np.int64)
    adj_w = np.zeros([num_nodes, width], np.float32)
    ids, w = q2i.top(nq, width)
    ids[:, k:], w[:, k:] = -1, 0.0
    _place(adj_ids, adj_w, query_node[query_rows], np.where(ids[query_rows] >= 0,
                                                            ids[query_rows] + item_base, -1),
           w[query_rows])
    s, d, iw = _item_lists(item_features, names, i2q, query_node, bases, width)
    ids, w = rows_to_matrix(s, d, iw, ni, width)
    _place(adj_ids, adj_w, item_base + np.arange(ni), ids, w)
    for j, name in enumerate(names):
        values = item_features[:, j].astype(np.int64)
        rows = np.flatnonzero(values > 0)
        s, d, aw = top_per_source(bases[name] + values[rows] - 1, item_base + rows,
                                  item_clicks[rows] + 1.0, k)
        ids, w = rows_to_matrix(s - bases[name], d, aw, max(0, feature_sizes[name] - 1), width)
        _place(adj_ids, adj_w, bases[name] + np.arange(len(ids)), ids, w)
    log(f"graph: {num_nodes:,} nodes ({len(query_rows):,} queries, {ni:,} items, "
        f"{num_nodes - item_base - ni:,} attribute values); two-hop lists")

    item_nodes = item_base + np.arange(ni)
    query_hop2, query_hop2_w = np.zeros([nq, config.two_hop], np.int32), \
        np.zeros([nq, config.two_hop], np.float32)
    q_ids, q_w = _two_hop(adj_ids, adj_w, query_node[query_rows], config.two_hop)
    query_hop2[query_rows], query_hop2_w[query_rows] = q_ids, q_w
    item_hop2, item_hop2_w = _two_hop(adj_ids, adj_w, item_nodes, config.two_hop)
    query_hop1 = np.zeros([nq, width], np.int32)
    query_hop1_w = np.zeros([nq, width], np.float32)
    query_hop1[query_rows] = adj_ids[query_node[query_rows]]
    query_hop1_w[query_rows] = adj_w[query_node[query_rows]]

    meta = tables_lib.GraphMeta(
        num_nodes=int(num_nodes), num_query_nodes=int(len(query_rows)),
        item_base=int(item_base), attribute_bases={n: int(b) for n, b in bases.items()},
        neighbors=int(k), two_hop=int(config.two_hop),
        counts={"clicks": int(clicks), "query_item_pairs_kept": int(len(q2i.src)),
                "items_with_clicks": int((item_clicks > 0).sum()),
                "seconds": round(time.monotonic() - start, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     1)})
    arrays = {"query_nodes.npy": query_node.astype(np.int32),
              "query_hop1.npy": query_hop1, "query_hop1_weights.npy": query_hop1_w,
              "query_hop2.npy": query_hop2, "query_hop2_weights.npy": query_hop2_w,
              "item_hop1.npy": adj_ids[item_nodes].astype(np.int32),
              "item_hop1_weights.npy": adj_w[item_nodes],
              "item_hop2.npy": item_hop2, "item_hop2_weights.npy": item_hop2_w,
              "node_hop1.npy": adj_ids.astype(np.int32), "node_hop1_weights.npy": adj_w}
    return meta, arrays
