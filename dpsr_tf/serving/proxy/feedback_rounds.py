"""Dense feedback over shards: the proxy's first round (docs/export.md "Dense feedback over
shards").

A dense feedback servable moves each query head toward the mean of the query's first hits
(dpsr_tf/search/dense_feedback.py). A shard only knows its own items, so for a sharded servable
the proxy finds the whole catalog's first hits itself: for a request to signature S it calls
S.feedback_hits on every shard (each shard's first hits: scores [B, f], embeddings [B, f, d]),
pools them into each query's direction (the unit mean of the f best, direction_of_hits_np), and
sends S.feedback_search that direction with the request, whose answers are merged as any other
(server.py). The answer then equals a one-shard servable's over the same items, which is what
`dpsr export`'s choice of feedback and `dpsr evaluate` score.

A shard's first-round answer is checked: its declared shapes on the wire before it is parsed
(the request's rows, at most MAX_ITEMS hits per row and MAX_DIM dimensions), then its values
(finite embeddings, finite or -inf scores); anything else fails that shard (INTERNAL), as an
oversized result list does (shard_answers.py).
"""
from typing import Optional, Sequence, Tuple

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.search.dense_feedback import (DIRECTION_INPUT, HIT_EMBEDDINGS, HIT_SCORES,
                                           HITS_SUFFIX, MAX_ITEMS, SEARCH_SUFFIX,
                                           direction_of_hits_np)
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.proxy import shard_answers

MAX_DIM = 4096  # embedding dimensions a first-round answer may carry


def has_rounds(sig_map, signature: str) -> bool:
    """Whether a servable's SignatureDefMap has signature's two feedback rounds."""
    hits = sig_map.signature_def.get(signature + HITS_SUFFIX)
    search = sig_map.signature_def.get(signature + SEARCH_SUFFIX)
    return (hits is not None and search is not None and DIRECTION_INPUT in search.inputs
            and HIT_SCORES in hits.outputs and HIT_EMBEDDINGS in hits.outputs)


def hits_request(request, signature: str, k_input: str):
    """The first-round request: `request` (a PredictRequest for the shards) to
    signature.feedback_hits, without k, fetching the hits only."""
    hits = predict_pb2.PredictRequest()
    hits.CopyFrom(request)
    hits.model_spec.signature_name = signature + HITS_SUFFIX
    if k_input in hits.inputs:
        del hits.inputs[k_input]
    del hits.output_filter[:]
    hits.output_filter.extend([HIT_SCORES, HIT_EMBEDDINGS])
    return hits


def search_request(request, signature: str, direction: np.ndarray):
    """The second-round request: `request` to signature.feedback_search with the direction."""
    search = predict_pb2.PredictRequest()
    search.CopyFrom(request)
    search.model_spec.signature_name = signature + SEARCH_SUFFIX
    tensors.from_ndarray(np.asarray(direction, np.float32), search.inputs[DIRECTION_INPUT])
    return search


def _refuse(where: str, problem: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL,
                        f"{where} answered its first feedback hits with {problem}; refused "
                        "(check that every shard serves the same model)")


def parse_hits(data: bytes, rows: Optional[int], where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(scores [B, f] float32, embeddings [B, f, d] float32) of a first-round answer.

    Raises:
      ServingError(INTERNAL): outputs missing, of the wrong dtype or rank, larger than the
        request could need, non-finite embeddings, or NaN / +inf scores.
    """
    try:
        shapes = shard_answers.declared_output_shapes(data)
    except ValueError as e:
        raise _refuse(where, f"a malformed PredictResponse: {e}") from None
    limits = {HIT_SCORES: 2, HIT_EMBEDDINGS: 3}
    for alias, rank in limits.items():
        shape = shapes.get(alias)
        if alias not in shapes:
            raise _refuse(where, f"no output '{alias}'")
        if shape is None:
            continue  # not among the first fields: judged after the parse
        problem = _shape_problem(shape, rank, rows)
        if problem:
            raise _refuse(where, f"output '{alias}' of shape {shape}: {problem}")
    response = predict_pb2.PredictResponse.FromString(data)
    arrays = []
    for alias, rank in limits.items():
        proto = response.outputs[alias]
        if proto.dtype != types_pb2.DT_FLOAT:
            raise _refuse(where, f"output '{alias}' of dtype {tensors.dtype_name(proto.dtype)} "
                          "(expected DT_FLOAT)")
        shape = [d.size for d in proto.tensor_shape.dim]
        problem = _shape_problem(shape, rank, rows)
        if problem:
            raise _refuse(where, f"output '{alias}' of shape {shape}: {problem}")
        try:
            arrays.append(tensors.to_ndarray(proto, alias, MAX_ITEMS * MAX_DIM * (rows or 1)))
        except ServingError as e:
            raise _refuse(where, e.message) from None
    scores, embeddings = arrays
    if embeddings.shape[:2] != scores.shape:
        raise _refuse(where, f"{list(scores.shape)} scores and {list(embeddings.shape)} "
                      "embeddings")
    if not np.isfinite(embeddings).all():
        raise _refuse(where, "non-finite embeddings")
    if np.isnan(scores).any() or (scores == np.inf).any():
        raise _refuse(where, "NaN or +inf scores (a hit's score is finite, -inf pads)")
    return scores, embeddings


def _shape_problem(shape, rank: int, rows: Optional[int]) -> Optional[str]:
    if len(shape) != rank:
        return f"rank {len(shape)} (expected {rank})"
    if any(d < 0 for d in shape):
        return "a negative dimension"
    if rows is not None and shape[0] != rows:
        return f"{shape[0]} rows for a request of {rows}"
    if shape[1] > MAX_ITEMS:
        return f"{shape[1]} hits per row (at most {MAX_ITEMS})"
    if rank == 3 and shape[2] > MAX_DIM:
        return f"{shape[2]} dimensions (at most {MAX_DIM})"
    return None


def direction(hits: Sequence[Tuple[int, Tuple[np.ndarray, np.ndarray]]], where: str):
    """Each query's unit direction from the shards' first hits: the unit mean of the f best
    pooled hits, f the most any shard returned per row.

    Args:
      hits: [(shard, (scores [B, f], embeddings [B, f, d]))], at least one.
      where: the model, for messages.

    Returns:
      ([B, d] float32, [(shard, ServingError)] of shards left out: their (rows, dimensions)
      differ from those most shards answered (ties: the first shard's), so they cannot serve
      the same model).
    """
    shapes = [(scores.shape[0], embeddings.shape[2]) for _, (scores, embeddings) in hits]
    common = max(shapes, key=shapes.count)   # the first of the most frequent
    kept = [h for h, shape in zip(hits, shapes) if shape == common]
    left_out = [(s, ServingError(grpc.StatusCode.INTERNAL,
                                 f"shard {s} of {where} answered first feedback hits of "
                                 f"{shape[0]} rows x {shape[1]} dimensions where other shards "
                                 f"answered {common[0]} x {common[1]}; refused (check that "
                                 "every shard serves the same model)"))
                for (s, _), shape in zip(hits, shapes) if shape != common]
    items = max(scores.shape[1] for _, (scores, _) in kept)
    scores = np.concatenate([sc for _, (sc, _) in kept], axis=1)
    embeddings = np.concatenate([e for _, (_, e) in kept], axis=1)
    return direction_of_hits_np(scores, embeddings, items), left_out
