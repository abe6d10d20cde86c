"""TokenizerConfig: the settings shared by the pybind11 tokenizer and the Dpsr>Tokenize op."""
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
      vocab_file: path of a vocabulary file (vocabulary mode), or None (hashing mode).
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

    def op_attrs(self) -> dict:
        """The Dpsr>Tokenize attributes (everything but the vocabulary path)."""
        attrs = dataclasses.asdict(self)
        attrs.pop("vocab_file")
        return attrs

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "TokenizerConfig":
        return config_json.from_json(cls, text, source)
