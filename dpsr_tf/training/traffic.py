"""Bytes that cross between tasks in one training step, from the placed graph.

TensorFlow's distributed runtime cuts the graph by device; every edge whose producer and
consumer live on different tasks becomes a Send/Recv pair that ships the tensor's bytes over
gRPC once per (tensor, destination task). `crossing_tensors` finds those edges in the subgraph
that a step runs (the backward closure of the fetches), placing each op where the placer will:
with the variable whose resource it reads or updates (the placer colocates resource edges), with
the op it is colocated with (colocate_with, gradients colocated with their forward ops), or on
its own device. `traffic_ops` builds, for
each crossing tensor, an op computing its size in bytes on the producing device; running them
in the same step gives the exact payload of that step (protocol framing excluded).
"""
import collections
from typing import Dict, Iterable, List, Tuple

import tensorflow as tf

Task = Tuple[str, int]


def _task(device: str, default: Task) -> Task:
    """(job, task) of a device string; a device without a job runs on the client's task."""
    spec = tf.DeviceSpec.from_string(device or "")
    if not spec.job:
        return default
    return (spec.job, spec.task or 0)


def effective_device(op: tf.Operation, graph: tf.Graph, _memo=None) -> str:
    """Where the placer puts `op`: with the variable whose resource (or ref) it consumes (the
    placer's colocation of resource edges), else with the op it is colocated with, else on its
    own device."""
    memo = {} if _memo is None else _memo
    if op.name in memo:
        return memo[op.name]
    memo[op.name] = op.device
    device = None
    for t in op.inputs:
        if t.dtype == tf.resource or t.dtype._is_ref_dtype:  # pylint: disable=protected-access
            device = effective_device(t.op, graph, memo)
            break
    if device is None:
        for group in op.colocation_groups():
            name = group.decode()[len("loc:@"):]
            if name != op.name:
                try:
                    target = graph.get_operation_by_name(name)
                except KeyError:
                    continue
                if target.device:
                    device = effective_device(target, graph, memo)
                    break
    memo[op.name] = device or op.device
    return memo[op.name]


def step_ops(fetches: Iterable) -> List[tf.Operation]:
    """The ops a step that fetches `fetches` runs (inputs and control inputs, transitively)."""
    stack = [f.op if isinstance(f, tf.Tensor) else f for f in fetches]
    seen = {}
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def crossing_tensors(fetches: Iterable, graph: tf.Graph = None,
                     client_task: Task = ("worker", 0)) -> List[Tuple[tf.Tensor, Task, Task]]:
    """[(tensor, source task, destination task)] for every tensor a step sends between tasks
    (once per destination task, as the runtime does). Ops without a job run on client_task."""
    graph = graph or tf.compat.v1.get_default_graph()
    ops = step_ops(fetches)
    memo = {}
    device = {op.name: _task(effective_device(op, graph, memo), client_task) for op in ops}
    out, seen = [], set()
    for op in ops:
        dst = device[op.name]
        for t in op.inputs:
            src = device[t.op.name]
            if src != dst and (t.name, dst) not in seen:
                seen.add((t.name, dst))
                out.append((t, src, dst))
    return out


def traffic_ops(crossing, categorize=None) -> Dict[str, tf.Tensor]:
    """Scalar int64 byte counts per "<src job>-><dst job>[:<category>]" for one step.

    Resource handles and strings are counted as 0 (a handle is a few dozen bytes).
    """
    sums = collections.defaultdict(list)
    for t, src, dst in crossing:
        if t.dtype in (tf.resource, tf.variant, tf.string):
            continue
        with tf.compat.v1.colocate_with(t.op):
            size = tf.size(t, out_type=tf.int64) * t.dtype.size
        key = f"{src[0]}->{dst[0]}"
        sums[key].append(size)
        if categorize is not None:
            sums[f"{key}:{categorize(t)}"].append(size)
    return {k: tf.add_n(v) for k, v in sums.items()}
