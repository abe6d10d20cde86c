"""Merging the answers of index shards into one global top-K (the proxy's reduce step).

Each shard answers the same Predict request over its subset of items with row-aligned outputs
[B, K_s] (item_ids, scores, heads, ...). Per row the merge pools every shard's entries, drops
padding (empty ids), keeps each id once with its best score, and returns the K best by score,
descending. K is the request's k, or the largest K_s when the request has none. Rows with fewer
than K entries are padded: "" ids, -inf scores, -1 for integer outputs.

Hybrid servables (dpsr_tf/export/servable_graph.py) also answer dense_scores, lexical_scores and a
fusion_rule: their entries are re-fused over the pool (dpsr_tf/search/fusion.py refuse_np), so the
merged list ranks by the global dense and lexical lists, not by each shard's own ranks. A servable
with an encoder list (its answers carry encoder_scores) holds the whole catalog and has fused a
third list the proxy cannot rebuild: its one answer keeps its own scores, and several shards of
such servables are refused.

Shard answers reach the merge only after dpsr_tf/serving/proxy/shard_answers.py found them no larger
than the request could need.
"""
from typing import Dict, List, Optional, Sequence

from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

import grpc
import numpy as np

from dpsr_tf.search.fusion import FusionConfig, refuse_np
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError

# The output a servable with an encoder list adds (dpsr_tf/export/stages/encoder_list.py).
ENCODER_OUTPUT = "encoder_scores"


def _pad_value(dtype):
    if dtype == object:
        return b""
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    if dtype == np.bool_:
        return False
    return -1


def merge_topk(shard_outputs: Sequence[Dict[str, np.ndarray]], k: Optional[int],
               id_output: str = "item_ids", score_output: str = "scores") -> Dict[str, np.ndarray]:
    """Global top-k of shard answers.

    Args:
      shard_outputs: per shard, alias -> array; `id_output` (object [B, K_s] bytes) and
        `score_output` (float [B, K_s]) are required; other [B, K_s] outputs follow the same
        permutation; outputs of any other shape are taken from the first shard.
      k: results per row, or None for the largest K_s.
      id_output, score_output: aliases of the merge key and the score.

    Returns:
      alias -> array with row-aligned outputs of shape [B, K].

    Raises:
      ServingError(INTERNAL) when shards disagree on outputs or batch size.
    """
    if not shard_outputs:
        raise ServingError(grpc.StatusCode.INTERNAL, "no shard answers to merge")
    first = shard_outputs[0]
    for alias in (id_output, score_output):
        if alias not in first:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"shard answers lack the merge output '{alias}'; outputs: "
                               f"{sorted(first)} (set id_output/score_output in the proxy "
                               "config)")
    ids0 = first[id_output]
    if ids0.ndim != 2:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"merge output '{id_output}' must be [batch, k], got "
                           f"{list(ids0.shape)}")
    batch = ids0.shape[0]
    aligned: List[str] = []
    for alias, value in first.items():
        if value.ndim >= 2 and value.shape[:2] == ids0.shape:
            aligned.append(alias)
    for i, out in enumerate(shard_outputs):
        ids = out.get(id_output)
        if ids is None or ids.ndim != 2 or ids.shape[0] != batch:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"shard answer {i} has '{id_output}' of shape "
                               f"{None if ids is None else list(ids.shape)}; expected "
                               f"[{batch}, k]")
        for alias in aligned:
            if alias not in out or out[alias].shape[:2] != ids.shape:
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"shard answer {i}: output '{alias}' is missing or not "
                                   f"aligned with '{id_output}'")
    pooled = {a: np.concatenate([o[a] for o in shard_outputs], axis=1) for a in aligned}
    _refuse_hybrid(first, pooled, score_output, len(shard_outputs))
    width = k if k is not None else max(o[id_output].shape[1] for o in shard_outputs)
    rows_idx = []
    orders = np.argsort(-pooled[score_output].astype(np.float64), axis=1, kind="stable")
    for b in range(batch):
        ids = pooled[id_output][b]
        order = orders[b]
        top = ids[order[:width]].tolist()
        unique = set(top)
        if len(unique) == len(top) and b"" not in unique:  # the usual case: disjoint shards
            rows_idx.append(order[:width])
            continue
        seen, keep = {b""}, []  # drop padding, keep each id's best entry
        for pos, item in zip(order.tolist(), ids[order].tolist()):
            if item not in seen:
                seen.add(item)
                keep.append(pos)
                if len(keep) == width:
                    break
        rows_idx.append(np.asarray(keep, dtype=np.int64))
    out_width = min(width, max((len(r) for r in rows_idx), default=0))
    merged = {}
    for alias in aligned:
        src = pooled[alias]
        dst = np.full((batch, out_width) + src.shape[2:], _pad_value(src.dtype), dtype=src.dtype)
        for b, idx in enumerate(rows_idx):
            dst[b, :len(idx)] = src[b, idx]
        merged[alias] = dst
    for alias, value in first.items():
        if alias not in merged:
            merged[alias] = value
    return merged


def _refuse_hybrid(first: Dict[str, np.ndarray], pooled: Dict[str, np.ndarray],
                   score_output: str, num_answers: int) -> None:
    """Replaces the pooled fused scores of hybrid answers by the fusion of the pooled lists
    (not those of a servable with an encoder list: module docstring)."""
    if ENCODER_OUTPUT in first:
        if num_answers > 1:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"{num_answers} shard answers carry {ENCODER_OUTPUT}: a servable "
                               "with an encoder list fuses it over the whole catalog and cannot "
                               "be one shard of several; serve it as the only shard")
        return
    if not {"fusion_rule", "dense_scores", "lexical_scores"} <= set(first) or not {
            "dense_scores", "lexical_scores"} <= set(pooled) or first["fusion_rule"].size == 0:
        return
    try:
        rule = first["fusion_rule"].reshape(-1)[0]
        cfg = FusionConfig.from_json(rule.decode("utf-8") if isinstance(rule, bytes) else rule)
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"shard answers carry an unreadable fusion_rule: {e}") from None
    pooled[score_output] = refuse_np(pooled["dense_scores"], pooled["lexical_scores"], cfg)


# Strings are converted this many at a time: each chunk is one C call that holds the GIL, so
# chunks keep a merge thread from holding it longer than about a millisecond at once.
_STRING_CHUNK = 8192


def _decode(proto, name: str) -> np.ndarray:
    """tensors.to_ndarray, in chunks for large string tensors."""
    if proto.dtype != types_pb2.DT_STRING or len(proto.string_val) <= _STRING_CHUNK:
        return tensors.to_ndarray(proto, name)
    shape = tensors.declared_shape(proto, name)
    count = tensors.check_num_elements(shape, tensors.MAX_ELEMENTS, name)
    values = proto.string_val
    if len(values) != count:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name}: shape {list(shape)} needs {count} strings, got {len(values)}")
    out = np.empty(count, dtype=object)
    for start in range(0, count, _STRING_CHUNK):
        out[start:start + _STRING_CHUNK] = values[start:start + _STRING_CHUNK]
    return out.reshape(shape)


def _encode(array: np.ndarray, out) -> None:
    """tensors.from_ndarray into `out`, in chunks for large string arrays."""
    if array.dtype != object or array.size <= _STRING_CHUNK:
        tensors.from_ndarray(array, out)
        return
    out.dtype = types_pb2.DT_STRING
    out.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                for d in array.shape)
    flat = array.ravel()
    for start in range(0, flat.size, _STRING_CHUNK):
        out.string_val.extend(flat[start:start + _STRING_CHUNK].tolist())


def response_outputs(response) -> Dict[str, np.ndarray]:
    """alias -> np.ndarray of a PredictResponse."""
    return {alias: _decode(t, f"output '{alias}'") for alias, t in response.outputs.items()}


def merge_responses(answers: Sequence["predict_pb2.PredictResponse"], k: Optional[int],
                    id_output: str, score_output: str,
                    wanted: Sequence[str] = ()) -> "predict_pb2.PredictResponse":
    """The merged PredictResponse (outputs only) of shard answers: decode, merge_topk, encode.

    CPU-bound (numpy sorts release the GIL); the proxy runs large merges in a worker thread.

    Raises:
      ServingError(INTERNAL): the answers cannot be decoded or merged.
    """
    try:
        outputs = [response_outputs(a) for a in answers]
    except ServingError as e:  # a shard's bad tensor is the shard's fault, not the client's
        raise ServingError(grpc.StatusCode.INTERNAL, f"shard answer: {e.message}") from None
    merged = merge_topk(outputs, k, id_output, score_output)
    response = predict_pb2.PredictResponse()
    for alias, value in merged.items():
        if not wanted or alias in wanted:
            _encode(value, response.outputs[alias])
    return response
