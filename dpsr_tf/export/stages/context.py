"""BuildContext: what the stages of one servable share while they add their ops to the graph.

Stages read what earlier stages left (the request's query and k, the text the towers see, the
query features, the head embeddings) and add to it. The served list is made by the stages with a
`rank` hook, in order (dense search, lexical fusion, response): ctx.rank() runs them, once per
variant of the list (the plain one, and the one moved along a given feedback direction).
"""
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf


class BuildContext:
    """The graph under construction and the tensors the stages hand on.

    Attributes:
      model_config, layout_spec, servable: the model's config, its layout, the ServableConfig.
      stages: the stages of this servable, in order.
      query: [B] string, the request's query as typed (placeholder); k: scalar int32.
      input_checks: the request checks every signature depends on.
      searched: [B] string, the text the query tower and BM25 see (after spelling).
      tokenize: texts [B] -> ragged token ids, the model tokenizer (set by the tokenization stage).
      request_inputs: alias -> placeholder of every query-side input (query, k, user features).
      features: the query tower's input features.
      embeddings: [B, m, d] float32 query head embeddings.
      signatures: signature name -> (inputs dict, outputs dict) of tensors.
      defaults: signature name -> input alias -> numpy value for a left-out input.
    """

    def __init__(self, model_config, layout_spec, servable, stages):
        self.model_config = model_config
        self.layout_spec = layout_spec
        self.servable = servable
        self.stages = list(stages)
        self.query: Optional[tf.Tensor] = None
        self.k: Optional[tf.Tensor] = None
        self.input_checks: List[tf.Operation] = []
        self.searched: Optional[tf.Tensor] = None
        self.tokenize: Optional[Callable[[tf.Tensor], tf.RaggedTensor]] = None
        self.request_inputs: Dict[str, tf.Tensor] = {}
        self.features: Dict[str, tf.Tensor] = {}
        self.embeddings: Optional[tf.Tensor] = None
        self.signatures: Dict[str, tuple] = {}
        self.defaults: Dict[str, Dict[str, np.ndarray]] = {}
        self._cached: Dict[str, object] = {}

    def stage(self, name: str):
        """The stage called `name` in this servable, or None."""
        return next((s for s in self.stages if s.NAME == name), None)

    def once(self, name: str, build: Callable[[], object]):
        """The graph object `name`, built by build() on first use (one table or index resource
        however many signatures read it)."""
        if name not in self._cached:
            self._cached[name] = build()
        return self._cached[name]

    def rank(self, direction: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """The served list of each query: every ranking stage in order.

        Args:
          direction: [B, d] a feedback direction to move the heads along (dense feedback over
            shards), or None for the shard's own first hits.

        Returns:
          alias -> output tensor (item_ids, scores, heads, and each stage's extra outputs).
        """
        ranked: Dict[str, tf.Tensor] = {}
        for stage in self.stages:
            rank = getattr(stage, "rank", None)
            if rank is not None:
                ranked = rank(self, ranked, direction)
        return ranked

    def k_default(self) -> Dict[str, np.ndarray]:
        """The defaults of a signature whose optional input is k."""
        return {"k": np.array(self.servable.default_k, np.int32)}
