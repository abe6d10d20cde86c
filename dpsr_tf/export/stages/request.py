"""Stage `request`: the query and k inputs and the limits every request is checked against."""
import dataclasses

import tensorflow as tf

from dpsr_tf.export.stages.base import ExportFlag, Stage, check


@dataclasses.dataclass(frozen=True)
class RequestConfig:
    """Attributes:
      default_k: results per query when the request has no `k`.
      max_k: the largest `k` a request may ask for (each head searches k items).
      max_query_bytes: longer queries are rejected (INVALID_ARGUMENT); empty ones too.
    """

    default_k: int = 100
    max_k: int = 1000
    max_query_bytes: int = 4096


class RequestStage(Stage):
    """query [B] string (required), k scalar int32 (optional), checked before anything runs."""

    NAME = "request"
    Config = RequestConfig
    FLAGS = (
        ExportFlag("default_k", "integer", 100, "Results per query when a request has no k."),
        ExportFlag("max_k", "integer", 1000, "Largest k a request may ask for."),
        ExportFlag("max_query_bytes", "integer", 4096, "Longer queries are rejected."),
    )

    @classmethod
    def validate(cls, section: RequestConfig) -> None:
        if not 1 <= section.default_k <= section.max_k:
            raise ValueError(f"need 1 <= default_k <= max_k, got default_k={section.default_k}, "
                             f"max_k={section.max_k}")
        if section.max_query_bytes < 1:
            raise ValueError(f"max_query_bytes must be >= 1, got {section.max_query_bytes}")

    def build(self, ctx) -> None:
        s = ctx.servable
        query = tf.compat.v1.placeholder(tf.string, [None], name="query")
        k = tf.compat.v1.placeholder_with_default(tf.constant(s.default_k, tf.int32), [],
                                                  name="k")
        lengths = tf.strings.length(query)
        ctx.input_checks = [
            check(tf.reduce_all(lengths > 0), "query must not be empty; got byte lengths",
                  lengths),
            check(tf.reduce_all(lengths <= s.max_query_bytes),
                  f"query must be at most {s.max_query_bytes} bytes; got byte lengths", lengths),
            check(tf.logical_and(k >= 1, k <= s.max_k), f"k must be in [1, {s.max_k}]; got", k),
        ]
        ctx.query, ctx.k = query, k
        ctx.request_inputs = {"query": query, "k": k}
        with tf.control_dependencies(ctx.input_checks):
            ctx.searched = tf.identity(query)
