"""Pseudo-queries: self-supervision from the catalog for queries nobody has typed yet.

A user starts with a catalog and a small click log. Training only on logged queries teaches the
query tower the words of those queries; a word that appears in titles but never in a training
query is left where its random initialization put it, so an unseen query made of such words
lands nowhere near the items that contain them. Pseudo-queries close that gap: short texts made
from each item's own title and attributes, paired with that item as a positive, so every title
word is seen on the query side.

Kinds (drawn per pseudo-query with `PseudoQueryConfig.kind_weights`):
  span       a contiguous run of 1..max_words title words ("angle bracket" from
             "Simpson Strong-Tie 12-Gauge Angle Bracket")
  subset     2..max_words title words kept in title order, the others dropped (word drops)
  attribute  one categorical attribute value (brand, category, ...) plus a short title span,
             or two attribute values ("nike running shoes"); a span when the item has none

Words: whitespace-separated pieces with surrounding punctuation stripped; a run of CJK
ideographs, kana or hangul (no spaces between words) is cut into pieces of 2 characters, which
the tokenizer then segments into its character features as it does for real queries.

Generation is deterministic: pseudo-query j of item i depends only on (seed, i, j), so a layout
rebuilt with the same seed holds the same pool whatever the item order of other rows.
"""
import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

KINDS = ("span", "subset", "attribute")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_STRIP = "\"'()[]{},;:!?*|/\\<>“”‘’«»"


@dataclasses.dataclass(frozen=True)
class PseudoQueryConfig:
    """How `dpsr prepare` makes pseudo-queries from the catalog.

    Attributes:
      per_item: pseudo-queries per item in the pool (0 = none). Training draws from the pool
        (shuffled, repeated), so each epoch over it shows each item with a different text.
        16 beats 8 with a small log (docs/results.md, "The sweep behind the defaults").
      max_total: a catalog of N items gets min(per_item, max(1, max_total // N)) per item, so
        a large catalog does not get a pool bigger than its training can use (4M pseudo-queries
        of ~15 tokens: ~240 MB of token ids).
      max_words: longest pseudo-query, in words.
      kind_weights: relative weights of the kinds ("span", "subset", "attribute"). The
        default leans on attributes (an item without any gets a span instead, so a titles-only
        catalog draws span 0.7 / subset 0.3 either way): on unseen queries it lifted the dense
        list over the earlier (0.5, 0.3, 0.2) where attribute columns hold words (MovieLens,
        the synthetic catalog) and was neutral on Best Buy's category codes (docs/results.md
        "The attribute-heavy mix made the default").
      seed: seed of the generator.
    """

    per_item: int = 16
    max_total: int = 4_000_000
    max_words: int = 4
    kind_weights: Tuple[float, float, float] = (0.2, 0.3, 0.5)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind_weights", tuple(float(w) for w in self.kind_weights))
        if self.per_item < 0:
            raise ValueError(f"pseudo-queries per item must be >= 0, got {self.per_item}")
        if self.max_total < 1:
            raise ValueError(f"pseudo-query max_total must be >= 1, got {self.max_total}")
        if self.max_words < 1:
            raise ValueError(f"pseudo-query max_words must be >= 1, got {self.max_words}")
        if len(self.kind_weights) != len(KINDS) or any(w < 0 for w in self.kind_weights) \
                or sum(self.kind_weights) <= 0:
            raise ValueError(f"pseudo-query kind_weights {self.kind_weights}: give "
                             f"{len(KINDS)} weights >= 0 for {KINDS}, not all 0")


def split_words(text: str) -> List[str]:
    """The words of a title for pseudo-query generation (see the module docstring).

    >>> split_words("BEHR Premium (1-gal.) 苹果手机壳 Red")
    ['BEHR', 'Premium', '1-gal.', '苹果', '手机', '壳', 'Red']
    """
    words = []
    for piece in text.split():
        piece = piece.strip(_STRIP)
        if not any(ch.isalnum() for ch in piece):   # "-", "&", "/": no word to search by
            continue
        pos = 0
        for run in _CJK_RUN.finditer(piece):
            if run.start() > pos:
                words.append(piece[pos:run.start()])
            chars = run.group()
            words.extend(chars[i:i + 2] for i in range(0, len(chars), 2))
            pos = run.end()
        if pos < len(piece):
            words.append(piece[pos:])
    return words


def _join(words: Sequence[str]) -> str:
    return " ".join(words)


def _span(rng: np.random.Generator, words: Sequence[str], max_words: int) -> List[str]:
    length = int(rng.integers(1, min(max_words, len(words)) + 1))
    start = int(rng.integers(0, len(words) - length + 1))
    return list(words[start:start + length])


def _subset(rng: np.random.Generator, words: Sequence[str], max_words: int) -> List[str]:
    if len(words) < 3:
        return _span(rng, words, max_words)
    length = int(rng.integers(2, min(max_words, len(words)) + 1))
    keep = np.sort(rng.choice(len(words), size=length, replace=False))
    return [words[i] for i in keep]


def _attribute(rng: np.random.Generator, words: Sequence[str], attributes: Sequence[str],
               max_words: int) -> List[str]:
    values = [a for a in attributes if a]
    if not values:
        return _span(rng, words, max_words)
    first = values[int(rng.integers(len(values)))]
    if len(values) > 1 and rng.random() < 0.5:
        second = values[int(rng.integers(len(values)))]
        parts = [first] if second == first else [first, second]
    else:
        parts = [first] + _span(rng, words, max(1, min(2, max_words - 1)))
    rng.shuffle(parts)
    return parts


def item_pseudo_queries(title: str, attributes: Sequence[str], item_index: int,
                        config: PseudoQueryConfig) -> List[str]:
    """config.per_item pseudo-queries of one item (fewer when the title has no words).

    Args:
      title: the item's title.
      attributes: its categorical attribute values (brand, category, ...; "" = unknown).
      item_index: the item's row; with config.seed it seeds this item's generator.
      config: PseudoQueryConfig.

    Returns:
      A list of non-empty texts (duplicates possible for very short titles).
    """
    words = split_words(title)
    if not words:
        return []
    rng = np.random.default_rng([config.seed, item_index])
    weights = np.asarray(config.kind_weights) / sum(config.kind_weights)
    out = []
    for kind in rng.choice(len(KINDS), size=config.per_item, p=weights):
        if kind == 0:
            picked = _span(rng, words, config.max_words)
        elif kind == 1:
            picked = _subset(rng, words, config.max_words)
        else:
            picked = _attribute(rng, words, attributes, config.max_words)
        out.append(_join(picked))
    return out


def generate(titles: Sequence[str], attributes: Optional[Sequence[Sequence[str]]],
             config: PseudoQueryConfig) -> Tuple[List[str], np.ndarray]:
    """Pseudo-queries of a whole catalog.

    Args:
      titles: [N] item titles.
      attributes: [N] lists of attribute values per item (or None).
      config: PseudoQueryConfig.

    Returns:
      (texts [P], item_rows [P] int32): pseudo-query p is a positive of item item_rows[p];
      min(config.per_item, max(1, config.max_total // N)) per item with words.
    """
    texts: List[str] = []
    rows: List[int] = []
    if config.per_item == 0:
        return texts, np.zeros([0], np.int32)
    per_item = min(config.per_item, max(1, config.max_total // max(1, len(titles))))
    config = dataclasses.replace(config, per_item=per_item)
    for i, title in enumerate(titles):
        attrs = attributes[i] if attributes is not None else ()
        queries = item_pseudo_queries(title, attrs, i, config)
        texts.extend(queries)
        rows.extend([i] * len(queries))
    return texts, np.asarray(rows, np.int32)
