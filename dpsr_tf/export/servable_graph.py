"""The serving graph of a DPSR servable: query text in, item ids out, in one TF1 graph.

The graph is the composition of the servable's stages, in the order a query meets them
(dpsr_tf/export/stages/pipeline.py: STAGES).

A stage has no part in a servable it does not apply to (no speller vocabulary, not SearchGCN, not
personalized, no lexical index or --nohybrid, no rewrites, no ranker): prepare() returns None and
the servable's metadata lists only the stages it ran.

Every file the graph reads (index, id maps, vocabularies) is a constant path registered in the
ASSET_FILEPATHS collection, so SavedModelBuilder copies it into assets/ and the loader remaps it:
the servable directory can be copied anywhere. dpsr_tf/export/saved_model_export.py builds,
restores and saves this graph; this module only composes it.
"""
from typing import List, Sequence

from dpsr_tf.export.stages.base import ExportSource, Stage
from dpsr_tf.export.stages.context import BuildContext
from dpsr_tf.export.stages.pipeline import STAGES, ServableConfig

__all__ = ["ServableConfig", "ServableGraph", "prepare_stages"]


def prepare_stages(source: ExportSource, stages: Sequence[type] = STAGES) -> List[Stage]:
    """The stages that take part in this servable, their assets staged, in order.

    Raises:
      ValueError: a stage cannot be built from these sources (e.g. rewrites without a lexical
        index), naming what to do.
    """
    source.servable.validate()
    prepared = (stage.prepare(source) for stage in stages)
    return [stage for stage in prepared if stage is not None]


class ServableGraph:
    """Builds the inputs, outputs and signatures of a servable in the current TF1 graph.

    Attributes after construction: `signatures`, a dict signature name -> (inputs dict,
    outputs dict) of tensors, and `defaults`, signature name -> input alias -> the numpy value
    a server feeds when a request leaves that input out (TF Serving's SignatureDef.defaults).

    Signatures: serving_default {query, k?}; personalized {query, k?, user_<f>.., user_history}
    (personalized models only); lexical {query, k?} (hybrid servables only); query_embedding;
    item_embedding; with dense feedback, S.feedback_hits and S.feedback_search of each of
    serving_default and personalized (stages/dense_search.py); with a ranker, rerank and
    retrieve_rerank (stages/rerank.py).
    """

    def __init__(self, model_config, layout_spec, stages: Sequence[Stage],
                 servable: ServableConfig = ServableConfig()):
        servable.validate()
        self.stages = list(stages)
        ctx = BuildContext(model_config, layout_spec, servable, self.stages)
        for stage in self.stages:
            stage.build(ctx)
        for stage in self.stages:
            stage.finish(ctx)
        self.signatures = ctx.signatures
        self.defaults = ctx.defaults
        self._ctx = ctx

    @property
    def stage_names(self) -> List[str]:
        """The stages this servable runs, in order."""
        return [stage.NAME for stage in self.stages]

    def owns(self, variable) -> bool:
        """Whether a global variable is a stage's own (filled by restore(), not in the DPSR
        checkpoint)."""
        return any(stage.owns(variable) for stage in self.stages)

    def restore(self, session) -> None:
        """Fills every stage's own variables (after the DPSR checkpoint was restored)."""
        for stage in self.stages:
            stage.restore(session, self._ctx)

    def info(self) -> dict:
        """What each stage records in dpsr_servable.json, merged."""
        out = {}
        for stage in self.stages:
            out.update(stage.info())
        return out
