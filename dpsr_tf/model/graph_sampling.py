"""Neighbour choice of the sampled SearchGCN (`graph_neighbourhood="sampled"`), in-graph.

Training draws, per node and step, `fanout` distinct neighbours from the node's stored list with
probability proportional to the edge weight (click count; attribute edges weigh 1): weighted
sampling without replacement by Gumbel top-k (keys log w_j + Gumbel noise, the k largest kept),
so a first draw picks j with probability w_j / sum_k w_k and no node ever gets more than `fanout`
neighbours. Without noise (evaluation, indexing, serving) the same code keeps the `fanout`
largest weights: the deterministic top-N by weight (ties: the earlier list position).

The second convolution reads the neighbours' own lists from the node adjacency of the layout's
graph (graph/node_hop1*.npy), held by the model as two non-trainable variables, so checkpoints
and the servable carry it and serving needs no layout table for it.
"""
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.graph import tables as graph_tables

_TF_DTYPES = {np.dtype("<i4"): tf.int32, np.dtype("<i8"): tf.int64, np.dtype("<f4"): tf.float32}


def choose_neighbours(nodes: tf.Tensor, weights: tf.Tensor, fanout: int, sample: bool,
                      seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """At most `fanout` neighbours of each list.

    Args:
      nodes: int [..., W] neighbour node ids (0 = none).
      weights: float [..., W] edge weights; an entry with weight <= 0 or node 0 is never chosen.
      fanout: neighbours kept per list (the per-node cap).
      sample: True: weighted sampling without replacement (training); False: top-N by weight.
      seed: op seed of the Gumbel noise (None: from the graph seed).

    Returns:
      (nodes int64 [..., min(fanout, W)], weights float32 [..., min(fanout, W)]); an unfilled
      slot (fewer valid entries than fanout) is node 0 with weight 0.
    """
    nodes = tf.cast(nodes, tf.int64)
    weights = tf.cast(weights, tf.float32)
    valid = (nodes > 0) & (weights > 0)
    keys = tf.where(valid, tf.math.log(tf.maximum(weights, 1e-30)),
                    tf.fill(tf.shape(weights), -np.inf))
    if sample:
        u = tf.random.uniform(tf.shape(weights), minval=np.finfo(np.float32).tiny, maxval=1.0,
                              seed=seed)
        keys = keys - tf.math.log(-tf.math.log(u))
    width = nodes.shape[-1]
    k = min(int(fanout), int(width)) if width is not None else \
        tf.minimum(int(fanout), tf.shape(nodes)[-1])
    _, index = tf.math.top_k(keys, k=k, sorted=True)
    batch_dims = len(nodes.shape) - 1
    chosen_valid = tf.gather(valid, index, batch_dims=batch_dims)
    chosen_nodes = tf.gather(nodes, index, batch_dims=batch_dims)
    chosen_weights = tf.gather(weights, index, batch_dims=batch_dims)
    return (tf.where(chosen_valid, chosen_nodes, tf.zeros_like(chosen_nodes)),
            tf.where(chosen_valid, chosen_weights, tf.zeros_like(chosen_weights)))


def _read_npy(path: str, shape) -> tf.Tensor:
    """In-graph read of a little-endian C-order .npy file of the given shape."""
    offset, dtype, stored = layout_lib.npy_data_offset(path)
    if tuple(stored) != tuple(shape) or dtype not in _TF_DTYPES:
        raise ValueError(f"{path}: expected a {tuple(shape)} int32/float32 array, got {dtype} "
                         f"{tuple(stored)}; re-run `dpsr prepare ... --graph`")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = tf.strings.substr(tf.io.read_file(path), tf.constant(offset, tf.int64),
                            tf.constant(nbytes, tf.int64))
    return tf.reshape(tf.io.decode_raw(raw, _TF_DTYPES[dtype], little_endian=True), shape)


def node_adjacency(layout_spec, num_nodes: int) -> Tuple[tf.Variable, tf.Variable]:
    """The graph's node adjacency as non-trainable variables (call inside the model's scope).

    Returns:
      (ids int32 [num_nodes, W] (0 = none), weights float32 [num_nodes, W]), W the width of the
      layout's neighbour lists; initialized from the layout's graph/node_hop1*.npy (restored
      from the checkpoint everywhere else).

    Raises:
      FileNotFoundError: the layout's graph predates the node adjacency (the message says how
        to rebuild it).
    """
    ids_path = layout_spec.path(graph_tables.NODE_HOP1)
    weights_path = layout_spec.path(graph_tables.NODE_HOP1_WEIGHTS)
    for path in (ids_path, weights_path):
        try:
            open(path, "rb").close()
        except OSError:
            raise FileNotFoundError(
                f"{path} not found: graph_layers=2 reads the neighbours' own lists from the "
                f"node adjacency, which this layout's graph lacks; re-run `dpsr prepare ... "
                f"--graph` (or train with --graph_layers=1)") from None
    _, _, shape = layout_lib.npy_data_offset(ids_path)
    if int(shape[0]) != int(num_nodes):
        raise ValueError(f"{ids_path}: {shape[0]} node rows, but the model has graph_num_nodes="
                         f"{num_nodes}; use the layout the model was trained on")
    out = []
    for name, path, dtype in (("node_neighbours", ids_path, tf.int32),
                              ("node_neighbour_weights", weights_path, tf.float32)):
        out.append(tf.compat.v1.get_variable(
            name, dtype=dtype, initializer=_read_npy(path, tuple(shape)), trainable=False,
            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES]))
    return out[0], out[1]
