"""Stage `graph_lookup` (SearchGCN models): query text -> its click-graph lists, in-graph.

The servable gets the exact query text. The training queries that have a graph node (the layout's
queries/texts.txt rows with a node, first row of a text) are written one per line into an asset
file; a StaticHashTable maps a text to its line, and the lists of those queries are constants of
the graph, one extra all-zero first row standing for "not in the graph". A query that is not in
the file gets that row: no neighbours, so the searchgcn tower falls back to its text encoding,
as `dpsr evaluate` does for a query row without a node.
"""
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import tables as graph_tables
from dpsr_tf.export.stages.base import Stage, asset

ASSET_NAME = "graph_queries.txt"


def in_graph_queries(spec) -> Tuple[List[str], np.ndarray]:
    """(texts, layout query rows) of the queries with a graph node, one row per text."""
    graph = graph_tables.load_graph(spec, mmap=True)
    texts = layout_lib.load_queries(spec)
    seen, out_texts, out_rows = set(), [], []
    for row in np.flatnonzero(np.asarray(graph.query_nodes) > 0):
        text = texts[row]
        if text not in seen:
            seen.add(text)
            out_texts.append(text)
            out_rows.append(row)
    return out_texts, np.asarray(out_rows, np.int64)


def stage_graph_queries(spec, staging: str) -> str:
    """Writes the asset file of in-graph query texts into `staging`; returns its path."""
    texts, _ = in_graph_queries(spec)
    path = os.path.join(staging, ASSET_NAME)
    layout_lib.write_lines(path, texts)
    return path


def query_graph_features(query: tf.Tensor, spec, queries_path: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The searchgcn query tower's graph features of query [B] (tf.string).

    Args:
      queries_path: the path tensor of the staged texts file (registered as an asset by the caller).
    """
    _, rows = in_graph_queries(spec)
    graph = graph_tables.load_graph(spec)
    init = tf.lookup.TextFileInitializer(queries_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                         tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    table = tf.lookup.StaticHashTable(init, default_value=-1, name="graph_query_lines")
    index = table.lookup(query) + 1                                 # 0 = not in the graph
    out = {}
    for key, values in graph.features("query", rows).items():
        padded = np.concatenate([np.zeros_like(values[:1]), values], axis=0)
        out[key] = tf.gather(tf.constant(padded, name=key + "_table"), index)
    return out


class GraphLookupStage(Stage):
    """ctx.query (as typed) -> the searchgcn tower's graph features in ctx.features."""

    NAME = "graph_lookup"

    def __init__(self, queries_file: str):
        self._queries_file = queries_file

    @classmethod
    def prepare(cls, source):
        if source.model_config.tower != "searchgcn":
            return None
        return cls(stage_graph_queries(source.layout_spec, source.staging))

    def build(self, ctx) -> None:
        ctx.features.update(query_graph_features(ctx.query, ctx.layout_spec,
                                                 asset(self._queries_file)))
