"""TokenizerConfig: the settings shared by the pybind11 tokenizer and the Dpsr>Tokenize op.

Both take the options as one string, the C++ core's serialised form (TokenizerConfig::ToString
in tokenizer_cc/core/tokenizer.h), which TokenizerConfig.to_config_string() writes.
"""
import dataclasses
from typing import Optional

from dpsr_tf import config_json


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Which features the tokenizer emits and how they map to ids (docs/tokenizer.md).

    Attributes:
      word_unigrams: emit "w:<word>" for each Latin/Greek/Cyrillic/digit word.
      word_bigrams: emit "ww:<prev> <word>" for adjacent words.
      letter_trigrams: emit "t:<abc>" for the trigrams of "#<word>#" (typo tolerance).
      cjk_unigrams: emit "c:<char>" for each CJK ideograph, kana or hangul character.
      cjk_bigrams: emit "cc:<prev><char>" for adjacent CJK characters.
      num_buckets: hashing mode id space: id = feature_hash(key) % num_buckets.
      num_oov_buckets: vocabulary mode: unknown keys map to vocab_size + hash % num_oov_buckets.
      max_tokens: at most this many features per text.
      max_input_bytes: only the first max_input_bytes bytes of a text are read.
      max_word_chars: a word keeps at most this many characters.
      vocab_file: path of a vocabulary file (vocabulary mode), or None (hashing mode). Not an
        option of the core's config string: the pybind11 module and the op take it apart.

    An option added here is added to the C++ TokenizerConfig and its ForEachOption too.
    """

    word_unigrams: bool = True
    word_bigrams: bool = True
    letter_trigrams: bool = True
    cjk_unigrams: bool = True
    cjk_bigrams: bool = True
    num_buckets: int = 1 << 20
    num_oov_buckets: int = 1 << 14
    max_tokens: int = 256
    max_input_bytes: int = 16384
    max_word_chars: int = 32
    vocab_file: Optional[str] = None

    def to_config_string(self) -> str:
        """The options in the C++ core's one serialised form, what the pybind11 Tokenizer and
        the Dpsr>Tokenize op's `config` attr take: "name=value" for every field but vocab_file,
        sorted by name, joined by ","; bools true/false, integers decimal. The core checks the
        values (ValueError / InvalidArgument naming the option).

        Example: TokenizerConfig(max_tokens=8).to_config_string() ==
          "cjk_bigrams=true,cjk_unigrams=true,letter_trigrams=true,max_input_bytes=16384,"
          "max_tokens=8,max_word_chars=32,num_buckets=1048576,num_oov_buckets=16384,"
          "word_bigrams=true,word_unigrams=true"
        """
        items = sorted((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                       if f.name != "vocab_file")
        return ",".join(f"{name}={_config_value(value)}" for name, value in items)

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "TokenizerConfig":
        return config_json.from_json(cls, text, source)


def _config_value(value) -> str:
    """One option's value as the core reads it; anything else is left for the core to reject."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
