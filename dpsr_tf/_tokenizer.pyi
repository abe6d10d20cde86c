# Type stub of the pybind11 module dpsr_tf._tokenizer (tokenizer_cc/python/tokenizer_pybind.cc).
from typing import Sequence, Tuple, Union

import numpy as np

class TokenizerError(ValueError): ...

class Tokenizer:
    def __init__(
        self,
        word_unigrams: bool,
        word_bigrams: bool,
        letter_trigrams: bool,
        cjk_unigrams: bool,
        cjk_bigrams: bool,
        num_buckets: int,
        num_oov_buckets: int,
        max_tokens: int,
        max_input_bytes: int,
        max_word_chars: int,
        vocab_file: str,
    ) -> None: ...
    def tokenize(
        self, texts: Sequence[Union[str, bytes]]
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Returns (ids int64 [N], row_splits int64 [len(texts) + 1]); GIL released."""
    def features(self, texts: Sequence[Union[str, bytes]]) -> list[list[str]]: ...
    def id_of(self, key: str) -> int: ...
    @property
    def id_space(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...

def default_config() -> dict:
    """The C++ core TokenizerConfig's defaults, by option name (no vocab_file)."""
