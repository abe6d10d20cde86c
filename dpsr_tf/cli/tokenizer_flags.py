"""Tokenizer flags shared by the subcommands that tokenize (defined once, here)."""
import dataclasses

from absl import flags

from dpsr_tf.tokenization import TokenizerConfig

_DEFAULT = TokenizerConfig()
_FEATURES = flags.DEFINE_list(
    "features", "w,ww,t,c,cc",
    "Feature kinds to emit: w (word), ww (word bigram), t (letter trigram), c (CJK char), "
    "cc (CJK bigram).")
_NUM_BUCKETS = flags.DEFINE_integer("num_buckets", _DEFAULT.num_buckets,
                                    "Hash buckets (hashing mode).")
_VOCAB = flags.DEFINE_string("vocab_file", None, "Vocabulary file (vocabulary mode).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", _DEFAULT.max_tokens,
                                   "At most this many features per text.")

_KINDS = {"w": "word_unigrams", "ww": "word_bigrams", "t": "letter_trigrams",
          "c": "cjk_unigrams", "cc": "cjk_bigrams"}


def config_from_flags() -> TokenizerConfig:
    unknown = sorted(set(_FEATURES.value) - set(_KINDS))
    if unknown:
        raise flags.ValidationError(
            f"--features: unknown kinds {unknown}; choose from {sorted(_KINDS)}")
    enabled = {field: kind in _FEATURES.value for kind, field in _KINDS.items()}
    return dataclasses.replace(_DEFAULT, num_buckets=_NUM_BUCKETS.value,
                               vocab_file=_VOCAB.value, max_tokens=_MAX_TOKENS.value,
                               **enabled)
