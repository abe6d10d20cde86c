"""The catalog speller from Python: the C++ core (tokenizer_cc/core/speller.h) through pybind11.

A query word that no catalog item uses ("cabinent", "ceilikng", "6ft", "snowblower") matches
nothing in the lexical index and lands the dense tower among its letter trigrams' neighbours.
The speller replaces each such word by a catalog word: a digit/letter split, the closest word
within two edits, or a split into two words (the rules are in the header). `dpsr index` writes
the vocabulary (SPELLER_FILE, beside the lexical index: every word of the same documents, with
the number of items using it, and the words users type in the layout's train queries, known but
never proposed); `dpsr export` ships it as an asset of the servable, whose
Dpsr>SpellCorrect op corrects each query before both the query tower and BM25 see it
(spell_op.py); `dpsr evaluate` corrects with this module, so evaluation and serving agree.

    speller = Speller.from_texts(item_documents)
    speller.correct(["outdoor ceilikng fan"])   # ["outdoor ceiling fan"]
"""
import collections
import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence

from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.tokenization.tokenizer import Tokenizer, _native

SPELLER_FILE = "speller_vocab.txt"
# Word unigrams only: the words the C++ core corrects ("w:<word>").
_WORDS = TokenizerConfig(word_unigrams=True, word_bigrams=False, letter_trigrams=False,
                         cjk_unigrams=False, cjk_bigrams=False)


@dataclasses.dataclass(frozen=True)
class SpellerConfig:
    """max_distance: most edits of a correction (1 or 2); long_word: words of at least this
    many letters may take max_distance edits, shorter ones one."""

    max_distance: int = 2
    long_word: int = 6

    def validate(self) -> None:
        if self.max_distance not in (1, 2):
            raise ValueError(f"speller max_distance must be 1 or 2, got {self.max_distance}")
        if not 1 <= self.long_word <= 64:
            raise ValueError(f"speller long_word must be in [1, 64], got {self.long_word}")

    def op_attrs(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


def word_counts(texts: Iterable[str]) -> Dict[str, int]:
    """word -> number of texts using it, words as the tokenizer's unigram features emit them
    (lowercased; CJK characters are not words)."""
    counts = collections.Counter()
    for keys in Tokenizer(_WORDS).features(list(texts)):
        counts.update({k[2:] for k in keys})
    return dict(counts)


# A word typed in at least this many distinct logged queries is known to the speller even when
# no item uses it ("wii", "cod"): the model learned it from the log, a correction would move it.
MIN_QUERY_COUNT = 2


def vocabulary(documents: Iterable[str], queries: Iterable[str] = (),
               min_query_count: int = MIN_QUERY_COUNT) -> Dict[str, int]:
    """The speller's words: every word of the documents with the number using it, plus the
    words of at least min_query_count distinct queries that no document uses, with count 0
    (known, never proposed)."""
    counts = word_counts(documents)
    typed = word_counts(dict.fromkeys(queries))
    for word, n in typed.items():
        if n >= min_query_count and word not in counts:
            counts[word] = 0
    return counts


def write_vocabulary(path: str, counts: Dict[str, int]) -> int:
    """Writes the vocabulary file the C++ core reads (header, word<TAB>count sorted by word);
    returns the number of words."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(_native().SPELLER_HEADER + "\n")
        for word in sorted(counts):
            f.write(f"{word}\t{counts[word]}\n")
    return len(counts)


class Speller:
    """Corrects queries towards a catalog's words. Thread-safe; releases the GIL."""

    def __init__(self, counts: Dict[str, int], config: SpellerConfig = SpellerConfig()):
        config.validate()
        self.config = config
        self._impl = _native().Speller(sorted(counts.items()), config.max_distance,
                                       config.long_word)

    @classmethod
    def from_texts(cls, texts: Iterable[str],
                   config: SpellerConfig = SpellerConfig()) -> "Speller":
        return cls(word_counts(texts), config)

    @classmethod
    def load(cls, path: str, config: SpellerConfig = SpellerConfig()) -> "Speller":
        """The speller of a vocabulary file (write_vocabulary; `dpsr index` writes one).

        Raises:
          ValueError: the file is missing or malformed (the message names the file and line).
        """
        config.validate()
        self = cls.__new__(cls)
        self.config = config
        self._impl = _native().Speller.load(path, config.max_distance, config.long_word)
        return self

    def __len__(self) -> int:
        return self._impl.size

    def known(self, word: str) -> bool:
        return self._impl.known(word)

    def correct_word(self, word: str) -> Optional[str]:
        """The replacement of one lowercased word (maybe two words), or None."""
        return self._impl.correct_word(word) or None

    def correct(self, queries: Sequence[str]) -> List[str]:
        """Each query corrected, or unchanged when it has nothing to correct."""
        return [text for text, _ in self._impl.correct(list(queries))]

    def rewrite(self, query: str) -> Optional[str]:
        """The corrected query, or None when nothing changed."""
        (text, changed), = self._impl.correct([query])
        return text if changed else None
