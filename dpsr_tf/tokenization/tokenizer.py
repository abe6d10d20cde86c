"""Tokenizer: the pybind11 side of the C++ tokenizer, for data preparation and vocabularies."""
from typing import List, Sequence, Tuple, Union

import numpy as np

from dpsr_tf.tokenization.config import TokenizerConfig

Text = Union[str, bytes]


def _native():
    try:
        from dpsr_tf import _tokenizer  # built by `make build`: a missing one names the fix
    except ImportError as e:
        raise ImportError(
            "the DPSR tokenizer extension is not built; run `make build` in the project root"
        ) from e
    return _tokenizer


class Tokenizer:
    """Batch tokenizer over the C++ core. Thread-safe; the GIL is released while it works.

    Example:
      tok = Tokenizer(TokenizerConfig())
      ids, row_splits = tok.tokenize(["apple iphone", "手机壳"])
    """

    def __init__(self, config: TokenizerConfig = TokenizerConfig()):
        self._config = config
        self._impl = _native().Tokenizer(config.to_config_string(), config.vocab_file or "")

    @property
    def config(self) -> TokenizerConfig:
        return self._config

    @property
    def id_space(self) -> int:
        """Exclusive upper bound of the emitted ids: the embedding table size."""
        return self._impl.id_space

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary entries (0 in hashing mode)."""
        return self._impl.vocab_size

    def tokenize(self, texts: Sequence[Text]) -> Tuple[np.ndarray, np.ndarray]:
        """Tokenizes a batch.

        Args:
          texts: N str (encoded as UTF-8) or bytes (invalid UTF-8 is replaced, not an error).

        Returns:
          ids: [total] int64 feature ids.
          row_splits: [N + 1] int64; text i has ids[row_splits[i]:row_splits[i + 1]].
        """
        return self._impl.tokenize(list(texts))

    def tokenize_one(self, text: Text) -> np.ndarray:
        """[num_features] int64 ids of a single text."""
        ids, _ = self._impl.tokenize([text])
        return ids

    def features(self, texts: Sequence[Text]) -> List[List[str]]:
        """Feature keys ("w:apple", "t:#ap", "c:手", ...) of each text, in emission order."""
        return self._impl.features(list(texts))

    def id_of(self, key: str) -> int:
        """The id of one feature key."""
        return self._impl.id_of(key)
