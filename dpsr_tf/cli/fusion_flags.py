"""Flags of hybrid (dense + lexical) fusion, shared by `dpsr export` and `dpsr evaluate`."""
from absl import flags

from dpsr_tf.search.fusion import RULES, FusionConfig

_D = FusionConfig()
FUSION = flags.DEFINE_enum("fusion", _D.rule, list(RULES),
                           "How hybrid results fuse the dense and lexical lists: rrf "
                           "(reciprocal rank fusion) or blend (min-max normalized scores).")
RRF_K = flags.DEFINE_float("rrf_k", _D.rrf_k, "RRF rank offset: weight / (rrf_k + rank).")
DENSE_WEIGHT = flags.DEFINE_float("dense_weight", _D.dense_weight,
                                  "Weight of the dense (DPSR) list in the fusion.")
LEXICAL_WEIGHT = flags.DEFINE_float("lexical_weight", _D.lexical_weight,
                                    "Weight of the lexical (BM25) list in the fusion.")
LEXICAL_K = flags.DEFINE_integer("lexical_k", _D.lexical_k,
                                 "Lexical results fused per request; 0 = the request's k.")
LEXICAL_MIN_SCORE = flags.DEFINE_float("lexical_min_score", _D.lexical_min_score,
                                       "Lexical results must score above this BM25 value.")


def fusion_config() -> FusionConfig:
    """The FusionConfig the flags give (validated)."""
    cfg = FusionConfig(rule=FUSION.value, rrf_k=RRF_K.value, dense_weight=DENSE_WEIGHT.value,
                       lexical_weight=LEXICAL_WEIGHT.value, lexical_k=LEXICAL_K.value,
                       lexical_min_score=LEXICAL_MIN_SCORE.value)
    cfg.validate()
    return cfg
