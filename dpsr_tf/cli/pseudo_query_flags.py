"""Pseudo-query flags shared by `dpsr prepare` and `dpsr crossval` (defined once, here)."""
from absl import flags

from dpsr_tf.data.pseudo_queries import KINDS, PseudoQueryConfig

_DEFAULT = PseudoQueryConfig()
_PER_ITEM = flags.DEFINE_integer(
    "pseudo_queries_per_item", _DEFAULT.per_item,
    "Pseudo-queries made from each item's title and attributes (the 'pseudo' split, training "
    "only; 0 = none). See docs/training.md, 'Catalog pseudo-queries'.")
_MAX_WORDS = flags.DEFINE_integer("pseudo_query_max_words", _DEFAULT.max_words,
                                  "Longest pseudo-query in words.")
_KIND_WEIGHTS = flags.DEFINE_list(
    "pseudo_query_kinds", [str(w) for w in _DEFAULT.kind_weights],
    f"Relative weights of the pseudo-query kinds {', '.join(KINDS)}.")
_SEED = flags.DEFINE_integer("pseudo_query_seed", _DEFAULT.seed, "Seed of the pseudo-queries.")


def config_from_flags() -> PseudoQueryConfig:
    """PseudoQueryConfig from the flags (flags.ValidationError names the bad flag)."""
    try:
        weights = tuple(float(w) for w in _KIND_WEIGHTS.value)
    except ValueError:
        raise flags.ValidationError(f"--pseudo_query_kinds={','.join(_KIND_WEIGHTS.value)}: "
                                    f"give {len(KINDS)} numbers for {', '.join(KINDS)}, "
                                    f"e.g. 0.2,0.3,0.5") from None
    try:
        return PseudoQueryConfig(per_item=_PER_ITEM.value, max_words=_MAX_WORDS.value,
                                 kind_weights=weights, seed=_SEED.value)
    except ValueError as e:
        raise flags.ValidationError(f"pseudo-query flags: {e}") from None
