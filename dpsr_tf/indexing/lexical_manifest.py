"""The `lexical` section of an index build's manifest.json, and how a lexical index is built.

No FAISS, TensorFlow or native module: the proxy, the CLI and dpsr_tf/indexing/index_layout.py read it.
dpsr_tf/indexing/lexical_index.py builds and searches the files it describes.
"""
import dataclasses
import os
from typing import Tuple

import numpy as np

from dpsr_tf import config_json
from dpsr_tf.data import item_text
from dpsr_tf.indexing.manifest_files import check_listed_file
from dpsr_tf.tokenization.config import TokenizerConfig

LEXICAL_FILE = "lexical.idx"
# Feature kinds an index may use (TokenizerConfig fields).
FEATURE_KINDS = ("word_unigrams", "word_bigrams", "letter_trigrams", "cjk_unigrams",
                 "cjk_bigrams")
DEFAULT_FEATURES = ("word_unigrams", "cjk_unigrams", "cjk_bigrams")
# Hash space of lexical feature ids: 2^62 buckets, so distinct words practically never collide
# (the model's tokenizer uses a small space because each id owns an embedding row).
HASH_BUCKETS = 1 << 62


@dataclasses.dataclass(frozen=True)
class LexicalConfig:
    """How a lexical index is built.

    Attributes:
      features: tokenizer feature kinds indexed (FEATURE_KINDS).
      k1: BM25 term-frequency saturation (bm25s' default 1.5).
      b: BM25 length normalization in [0, 1] (default 0.75).
      max_tokens: features kept per document (the tokenizer's bound).
      fields: what each item's document holds (dpsr_tf/data/item_text.py): "title", "all"
        (the title and every categorical item column) or a list such as "title:2,brand".
    """
    features: Tuple[str, ...] = DEFAULT_FEATURES
    k1: float = 1.5
    b: float = 0.75
    max_tokens: int = 256
    fields: str = item_text.ALL

    def validate(self) -> None:
        unknown = sorted(set(self.features) - set(FEATURE_KINDS))
        if unknown or not self.features:
            raise ValueError(f"lexical features must be a non-empty subset of {FEATURE_KINDS}, "
                             f"got {list(self.features)}")
        if not (np.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"BM25 k1 must be finite and >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"BM25 b must be in [0, 1], got {self.b}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        item_text.parse_fields(self.fields)

    def tokenizer_config(self) -> TokenizerConfig:
        """The tokenizer configuration of documents and queries."""
        kinds = {kind: kind in self.features for kind in FEATURE_KINDS}
        return TokenizerConfig(num_buckets=HASH_BUCKETS, max_tokens=self.max_tokens, **kinds)


@dataclasses.dataclass(frozen=True)
class LexicalShardInfo:
    shard: int
    file: str          # relative to the build directory
    file_bytes: int
    num_terms: int
    num_postings: int


@dataclasses.dataclass(frozen=True)
class LexicalManifest:
    """The `lexical` section of manifest.json (docs/indexing.md)."""
    features: Tuple[str, ...]
    k1: float
    b: float
    max_tokens: int
    text: str                     # what was indexed: the resolved fields, e.g. "title,brand"
    num_docs: int
    avg_doc_length: float
    shards: Tuple[LexicalShardInfo, ...]
    build_seconds: float = 0.0
    # The catalog speller's vocabulary (dpsr_tf/tokenization/speller.py), relative to the
    # build directory: the words of the same documents. "" in builds made before it existed.
    speller_file: str = ""
    speller_bytes: int = 0

    @property
    def config(self) -> LexicalConfig:
        return LexicalConfig(features=tuple(self.features), k1=self.k1, b=self.b,
                             max_tokens=self.max_tokens, fields=self.text)

    def to_dict(self) -> dict:
        return config_json.to_dict(self)

    @classmethod
    def from_dict(cls, body, source: str) -> "LexicalManifest":
        out = config_json.from_dict(cls, body, source, path="lexical")
        out.check(source)
        return out

    def check(self, source: str) -> None:
        """Raises ValueError (naming `source`) when the recorded build config is invalid."""
        try:
            self.config.validate()
        except ValueError as e:
            raise ValueError(f"{source}: bad 'lexical' section ({e})") from None


def check_lexical_files(directory: str, lexical: LexicalManifest, source: str) -> None:
    """Every shard file exists with its recorded size (cheap; no file is read)."""
    for info in lexical.shards:
        check_listed_file(os.path.join(directory, info.file), info.file_bytes, source,
                          f"lexical shard {info.shard}")
    if lexical.speller_file:
        check_listed_file(os.path.join(directory, lexical.speller_file), lexical.speller_bytes,
                          source, "speller vocabulary")


