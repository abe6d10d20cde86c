"""The click graph of a layout (SearchGCN): nodes, top-N neighbour tables, two-hop lists, the
node adjacency.

  tables   file names in the layout, GraphMeta, numpy loading (index, evaluation, export)
  topn     bounded per-node top-N counters (streaming aggregation of click counts)
  build    `build_graph(layout_dir, GraphConfig)`: train records -> graph/ tables
  advice   whether a graph suits SearchGCN (the warning of `dpsr train --tower=searchgcn`)
"""
from dpsr_tf.data.graph.build import GraphConfig, build_graph
from dpsr_tf.data.graph.tables import GraphMeta, GraphTables, has_graph, load_graph

__all__ = ["GraphConfig", "GraphMeta", "GraphTables", "build_graph", "has_graph", "load_graph"]
