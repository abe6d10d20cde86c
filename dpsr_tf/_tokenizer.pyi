# Type stub of the pybind11 module dpsr_tf._tokenizer (tokenizer_cc/python/tokenizer_pybind.cc).
from typing import Sequence, Tuple, Union

import numpy as np

class TokenizerError(ValueError): ...

class Tokenizer:
    def __init__(self, config: str, vocab_file: str) -> None:
        """config: the core's config string (TokenizerConfig.to_config_string()); vocab_file:
        a vocabulary path, or "" for hashing mode."""
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

def canonical_config(config: str) -> str:
    """The core's reading of a config string, written back in its canonical form."""
