"""The servable's stages in the order a query meets them, and the ServableConfig they make.

A new query-time stage is one module in this package and one line in STAGES: its Config fields
join ServableConfig, its FLAGS join `dpsr export`, its prepare() stages its assets and its
build() adds its ops (stages/base.py).
"""
import dataclasses
from typing import Dict, List, Tuple

from dpsr_tf.export.stages.dense_search import DenseSearchStage
from dpsr_tf.export.stages.encoder_list import EncoderListStage
from dpsr_tf.export.stages.graph_lookup import GraphLookupStage
from dpsr_tf.export.stages.item_embedding import ItemEmbeddingStage
from dpsr_tf.export.stages.lexical_fusion import LexicalFusionStage
from dpsr_tf.export.stages.query_tower import QueryTowerStage
from dpsr_tf.export.stages.request import RequestStage
from dpsr_tf.export.stages.rerank import RerankStage
from dpsr_tf.export.stages.response import ResponseStage
from dpsr_tf.export.stages.rewrites import RewritesStage
from dpsr_tf.export.stages.spelling import SpellingStage
from dpsr_tf.export.stages.tokenization import TokenizationStage
from dpsr_tf.export.stages.user_inputs import UserInputsStage

STAGES = (
    RequestStage,         # query, k and their limits
    SpellingStage,        # Dpsr>SpellCorrect
    TokenizationStage,    # Dpsr>Tokenize
    GraphLookupStage,     # SearchGCN: the query's click-graph lists
    UserInputsStage,      # personalized models: user features and history
    QueryTowerStage,      # m head embeddings
    DenseSearchStage,     # Dpsr>FaissSearch per head (+ dense feedback), heads merged
    RewritesStage,        # the query's rewrites, for the lexical list
    LexicalFusionStage,   # Dpsr>LexicalSearch (BM25) fused with the dense list
    EncoderListStage,     # a pretrained encoder's list fused with the served one
    ResponseStage,        # labels -> item ids; serving_default, personalized
    RerankStage,          # DPR re-rank: rerank, retrieve_rerank
    ItemEmbeddingStage,   # the item tower, for new items
)


def _config_fields() -> List[Tuple[str, type, dataclasses.Field]]:
    out, owner = [], {}
    for stage in STAGES:
        if stage.Config is None:
            continue
        for f in dataclasses.fields(stage.Config):
            if f.name in owner:
                raise TypeError(f"config field {f.name!r} of stage {stage.NAME!r} is also "
                                f"stage {owner[f.name]!r}'s")
            owner[f.name] = stage.NAME
            out.append((f.name, f.type, dataclasses.field(default=f.default)))
    return out


def _validate(self) -> None:
    """Raises ValueError for a bad setting of any stage."""
    for stage in STAGES:
        if stage.Config is not None:
            stage.validate(section(self, stage))


ServableConfig = dataclasses.make_dataclass(
    "ServableConfig", _config_fields(), frozen=True, namespace={
        "validate": _validate,
        "__doc__": "Request limits and search settings baked into a servable: the Config "
                   "fields of every stage in STAGES, flat (each stage's Config documents its "
                   "own)."})
ServableConfig.__module__ = __name__


def section(servable, stage):
    """The stage's Config section of a ServableConfig."""
    return stage.Config(**{f.name: getattr(servable, f.name)
                           for f in dataclasses.fields(stage.Config)})


def field_owners() -> Dict[str, str]:
    """ServableConfig field -> the name of the stage that owns it."""
    return {f.name: stage.NAME for stage in STAGES if stage.Config is not None
            for f in dataclasses.fields(stage.Config)}


def export_flags():
    """Every stage's ExportFlag specs, in stage order."""
    return [flag for stage in STAGES for flag in stage.FLAGS]
