"""Vocabulary mode: count features over a corpus, keep the frequent ones, write a vocab file.

File format (read by the C++ core, tokenizer_cc/core/tokenizer.cc Vocabulary::Load): lines
starting with '#' are comments; every other line is "<feature key>\t<count>" and its id is its
position among those lines. Keys are sorted by descending count, then by key, so the file is
deterministic for a given corpus.
"""
import collections
import dataclasses
import os
from typing import Iterable, Optional, Sequence

from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.tokenization.tokenizer import Text, Tokenizer

_BATCH = 4096


def count_features(texts: Iterable[Text], config: TokenizerConfig) -> collections.Counter:
    """Counts feature keys over texts (hashing settings of `config` are irrelevant here)."""
    tok = Tokenizer(dataclasses.replace(config, vocab_file=None))
    counts = collections.Counter()
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == _BATCH:
            for keys in tok.features(batch):
                counts.update(keys)
            batch = []
    if batch:
        for keys in tok.features(batch):
            counts.update(keys)
    return counts


def build_vocabulary(texts: Iterable[Text], config: TokenizerConfig, path: str,
                     min_count: int = 2, max_size: Optional[int] = None) -> TokenizerConfig:
    """Writes a vocabulary file and returns `config` switched to vocabulary mode.

    Args:
      texts: the corpus (item titles and training queries, say).
      config: feature settings; its vocab_file is ignored.
      path: where to write the vocabulary.
      min_count: keep features seen at least this many times.
      max_size: keep at most this many features (the most frequent).

    Returns:
      dataclasses.replace(config, vocab_file=path).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
    counts = count_features(texts, config)
    kept = sorted(((k, c) for k, c in counts.items() if c >= min_count),
                  key=lambda kc: (-kc[1], kc[0]))
    if max_size is not None:
        kept = kept[:max_size]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# dpsr vocabulary: {len(kept)} features with count >= {min_count}\n")
        for key, count in kept:
            f.write(f"{key}\t{count}\n")
    os.replace(tmp, path)
    return dataclasses.replace(config, vocab_file=path)


def read_vocabulary(path: str) -> Sequence[str]:
    """The feature keys of a vocabulary file in id order (for inspection and tests)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[0] for line in f if not line.startswith("#")]
