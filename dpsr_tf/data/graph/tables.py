"""The graph tables of a layout (written by `dpsr prepare --graph`, read by the input pipeline,
the embedder and the export).

Node ids (one id space, int32): 0 = padding / no node; 1..Q the training queries (queries with
at least one positive train record, in query-row order); item_base + r the item of row r;
then, per categorical item feature f (in the layout's column order), attribute_bases[f] + v - 1
for value id v >= 1 (0 = unknown has no node). Queries seen only in evaluation have no node
and no edges.

Per ego row (query rows and item rows of the layout), padded with node 0:
  graph/query_nodes.npy          int32 [num_queries]        node of the query row (0 = none)
  graph/{query,item}_hop1.npy    int32 [rows, neighbors]    top neighbours by click count
  graph/{query,item}_hop1_weights.npy  float32              their click counts (attributes: 1)
  graph/{query,item}_hop2.npy    int32 [rows, two_hop]      top two-hop nodes by the two-step
  graph/{query,item}_hop2_weights.npy  float32              random-walk probability
Per node (the second convolution of graph_layers=2 reads the neighbours' own lists here):
  graph/node_hop1.npy            int32 [num_nodes, W]       every node's hop1 list (row 0 and
  graph/node_hop1_weights.npy    float32                    unused ids: empty); W = the items' width
  graph/meta.json                GraphMeta
"""
import dataclasses
import json
import os
from typing import Dict

import numpy as np

GRAPH_DIR = "graph"
META_JSON = "graph/meta.json"
QUERY_NODES = "graph/query_nodes.npy"
NODE_HOP1 = "graph/node_hop1.npy"
NODE_HOP1_WEIGHTS = "graph/node_hop1_weights.npy"
SIDES = ("query", "item")
HOPS = ("hop1", "hop2")


def table_path(side: str, hop: str, weights: bool = False) -> str:
    """Layout-relative path of a neighbour table, e.g. graph/item_hop2_weights.npy."""
    return f"{GRAPH_DIR}/{side}_{hop}{'_weights' if weights else ''}.npy"


@dataclasses.dataclass(frozen=True)
class GraphMeta:
    """What graph/meta.json holds.

    num_nodes: size of the node id space (the model's node embedding table).
    num_query_nodes: Q; item_base: node id of item row 0; attribute_bases: feature -> node id
    of its value id 1; neighbors / two_hop: widths of the hop1 / hop2 tables; counts: edges,
    clicks and build statistics.
    """

    num_nodes: int
    num_query_nodes: int
    item_base: int
    attribute_bases: Dict[str, int]
    neighbors: int
    two_hop: int
    counts: dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


@dataclasses.dataclass
class GraphTables:
    """The numpy tables (see the module docstring): hop[side][hop] and weight[side][hop]."""

    meta: GraphMeta
    query_nodes: np.ndarray
    hop: Dict[str, Dict[str, np.ndarray]]
    weight: Dict[str, Dict[str, np.ndarray]]

    def features(self, side: str, rows: np.ndarray, prefix: str = None) -> Dict[str, np.ndarray]:
        """The tower's graph features of `rows` of `side` ("query" or "item"), keyed
        "<prefix>_graph_hop1" / "_hop1_weight" / "_hop2" / "_hop2_weight" (prefix = side)."""
        prefix = prefix or side
        rows = np.asarray(rows, np.int64)
        out = {}
        for hop in HOPS:
            out[f"{prefix}_graph_{hop}"] = self.hop[side][hop][rows].astype(np.int64)
            out[f"{prefix}_graph_{hop}_weight"] = self.weight[side][hop][rows]
        return out


def has_graph(spec) -> bool:
    return os.path.isfile(spec.path(META_JSON))


def load_meta(spec) -> GraphMeta:
    path = spec.path(META_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: the layout {spec.layout_dir} has no click graph; re-run "
            f"`dpsr prepare ... --graph` (needed by --tower=searchgcn)")
    with open(path) as f:
        return GraphMeta(**json.load(f))


def load_graph(spec, mmap: bool = False) -> GraphTables:
    """Reads the layout's graph tables (FileNotFoundError with the fix when there are none)."""
    meta = load_meta(spec)
    mode = "r" if mmap else None
    hop = {s: {h: np.load(spec.path(table_path(s, h)), mmap_mode=mode) for h in HOPS}
           for s in SIDES}
    weight = {s: {h: np.load(spec.path(table_path(s, h, True)), mmap_mode=mode) for h in HOPS}
              for s in SIDES}
    return GraphTables(meta, np.load(spec.path(QUERY_NODES), mmap_mode=mode), hop, weight)
