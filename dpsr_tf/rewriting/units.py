"""The rewriter's output units: the project tokenizer's word and CJK-character features.

The retrieval tokenizer hashes features to ids, which cannot be decoded back to text; a
rewriter must emit text. So it works over the same tokenizer's *unigram features* ("w:<word>",
"c:<char>", as the C++ core lowercases and segments them) and keeps a vocabulary of the most
frequent ones, one key per line:

    line 0..3   <pad> <s> </s> <unk>      (reserved ids 0..3)
    line 4..    w:drill, c:手, ...

A unit sequence decodes to text by joining words with spaces and CJK characters without; that
is exactly what the tokenizer would segment back into the same units.
"""
import collections
from typing import Iterable, List, Sequence

import numpy as np

from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.tokenization.tokenizer import Tokenizer

PAD, BOS, EOS, UNK = 0, 1, 2, 3
RESERVED = ("<pad>", "<s>", "</s>", "<unk>")
# Unigram features only: words and CJK characters (no pairs, no letter trigrams).
UNIT_TOKENIZER = TokenizerConfig(word_unigrams=True, word_bigrams=False, letter_trigrams=False,
                                 cjk_unigrams=True, cjk_bigrams=False)


def unit_keys(texts: Sequence[str]) -> List[List[str]]:
    """The unit keys of each text ("w:drill", "c:手"), in text order."""
    return Tokenizer(UNIT_TOKENIZER).features(list(texts))


def units_to_text(keys: Iterable[str]) -> str:
    """Words joined by spaces, CJK characters glued to their CJK neighbours."""
    out, prev_cjk = [], False
    for key in keys:
        kind, _, value = key.partition(":")
        cjk = kind == "c"
        if out and not (cjk and prev_cjk):
            out.append(" ")
        out.append(value)
        prev_cjk = cjk
    return "".join(out)


class UnitVocab:
    """Unit key <-> id. Ids 0..3 are PAD, BOS, EOS, UNK."""

    def __init__(self, keys: Sequence[str]):
        keys = list(keys)
        if tuple(keys[:len(RESERVED)]) != RESERVED:
            raise ValueError(f"a unit vocabulary starts with {RESERVED}, got {keys[:4]}")
        self.keys = keys
        self._id = {k: i for i, k in enumerate(keys)}
        if len(self._id) != len(keys):
            raise ValueError("a unit vocabulary has a duplicate key")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, texts: Sequence[str], max_size: int, min_count: int = 2) -> "UnitVocab":
        """The reserved ids plus the most frequent units of `texts` (ties by key)."""
        if max_size <= len(RESERVED):
            raise ValueError(f"max_size must be > {len(RESERVED)}, got {max_size}")
        counts = collections.Counter(k for row in unit_keys(texts) for k in row)
        ranked = sorted((k for k, c in counts.items() if c >= min_count),
                        key=lambda k: (-counts[k], k))
        return cls(list(RESERVED) + ranked[:max_size - len(RESERVED)])

    @classmethod
    def load(cls, path: str) -> "UnitVocab":
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f])

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(k + "\n" for k in self.keys)

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """[N, max_len] int32: the units of each text (first max_len - 1) then EOS, PAD after."""
        out = np.full([len(texts), max_len], PAD, np.int32)
        for i, row in enumerate(unit_keys(texts)):
            ids = [self._id.get(k, UNK) for k in row][:max_len - 1] + [EOS]
            out[i, :len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of an id sequence, up to its first EOS; PAD, BOS and UNK are dropped."""
        keys = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(RESERVED):
                keys.append(self.keys[i])
        return units_to_text(keys)
