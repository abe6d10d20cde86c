"""Polysemous brands: made-up brand names that sell in two categories with opposite audiences.

`SyntheticConfig(polysemous_brands=N)` adds N brands to the synthetic world. Brand j is a
pseudo-word ("velor") that sells one product type in each of two categories whose audiences
differ (phones for high purchase power vs fruit for low; tools for men vs beauty for women), so
the bare word is an ambiguous query with two senses, clicked by different user segments. The
added brands hold BRAND_SHARE of their categories' items, so a sense is a large item set (over
100 items in the 10k-item demo catalog), and the first sense is the popular one (the second's
click weight is SECOND_SENSE_WEIGHT). The word names its brand in titles and in queries
("velor smartphone", "velor手机"...). Words alternate between the two sides of the default split
(`dpsr_tf.data.split.is_eval_query`, md5 % 10 == 0): the even-numbered bare names are eval
queries (never trained on: the benchmark's unseen queries), the odd-numbered ones are trained on,
so a model sees ambiguous queries of the same kind in training.

With N = 0 the world is the taxonomy as written (the default catalog, byte for byte).

Two options reshape the brands into the case the DPSR paper draws ("apple": clicks skew to
phones, and each sense has far more items than one page of results): minor_sense_weight makes
every click on the second sense rarer (the bare name's and the brand-naming queries' in the
second category), and brand_share gives the brands more of their categories' items, so that one
sense alone can fill a top 100. A single query vector pulled by the clicks then ranks the
popular sense's items first; a head per sense is what keeps the minor sense in the list. Both
None: the catalog without them, byte for byte.
"""
import dataclasses
import hashlib
import itertools
from typing import Dict, List, Optional, Tuple

from dpsr_tf.data import split as split_lib
from dpsr_tf.demo import synthetic_taxonomy as tx

# Category pairs whose audiences differ most (synthetic_taxonomy.CATEGORY_TILT), cycled.
CATEGORY_PAIRS = (("phones", "fruit"), ("tools", "beauty"), ("computers", "grains"),
                  ("bags", "pets"), ("appliances", "fruit"), ("tools", "clothing"),
                  ("computers", "pets"), ("phones", "grains"), ("shoes", "beauty"),
                  ("bags", "tools"), ("kitchen", "computers"), ("beverages", "toys"))
MAX_BRANDS = 96
BRAND_SHARE = 0.5
SECOND_SENSE_WEIGHT = 0.3



def check_skew(minor_sense_weight: Optional[float], brand_share: Optional[float]) -> None:
    """Raises ValueError unless each option is None or in (0, 1]."""
    for name, value in (("minor_sense_weight", minor_sense_weight),
                        ("polysemous_brand_share", brand_share)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")


_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = ("n", "r", "x", "l", "s")


def pseudo_words(n: int, taken) -> List[str]:
    """n pseudo-words (CVCVC, ordered by their sha1 so neighbours share no prefix) that no
    taxonomy word uses; word j is an eval query of the default split iff j is even."""
    out = []
    words = sorted(("".join(p) for p in itertools.product(_ONSETS, _VOWELS, _ONSETS, _VOWELS,
                                                          _CODAS)),
                   key=lambda w: hashlib.sha1(w.encode()).hexdigest())
    for word in words:
        if word in taken or split_lib.is_eval_query(word) != (len(out) % 2 == 0):
            continue
        out.append(word)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} pseudo-words available, asked for {n}")


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """The world's categories, brands and polysemous terms (extended or as written)."""

    categories: Tuple[tx.Category, ...]
    brands: Dict[str, tx.Brand]
    polysemy: Dict[str, Tuple[tx.Sense, ...]]
    added: Tuple[str, ...]                  # the polysemous brands' words, in order
    added_categories: Dict[str, Tuple[str, str]]


def taxonomy(num_brands: int) -> Taxonomy:
    """The taxonomy with `num_brands` polysemous brands added (0: as written).

    Brand j takes the category pair CATEGORY_PAIRS[j % 12] and in each category the type
    (j // 12) mod (number of types), so pairs and types both vary.
    """
    if not 0 <= num_brands <= MAX_BRANDS:
        raise ValueError(f"polysemous_brands must be in [0, {MAX_BRANDS}], got {num_brands}")
    if not num_brands:
        return Taxonomy(tx.CATEGORIES, tx.BRANDS, tx.POLYSEMY, (), {})
    cats = {c.key: c for c in tx.CATEGORIES}
    taken = set(tx.BRANDS) | {w.lower() for b in tx.BRANDS.values() for w in b.en.split()}
    for c in tx.CATEGORIES:
        for t in c.types:
            taken.update(w.lower() for name in (t.en, *t.en_synonyms) for w in name.split())
    words = pseudo_words(num_brands, taken)
    brands = dict(tx.BRANDS)
    polysemy = dict(tx.POLYSEMY)
    extra: Dict[str, List[str]] = {c.key: [] for c in tx.CATEGORIES}
    pairs = {}
    for j, word in enumerate(words):
        pair = CATEGORY_PAIRS[j % len(CATEGORY_PAIRS)]
        brands[word] = tx.Brand(word, word.title(), word, 1)
        senses = []
        for key in pair:
            types = cats[key].types
            senses.append(tx.Sense(types[(j // len(CATEGORY_PAIRS)) % len(types)].key, word))
            extra[key].append(word)
        polysemy[word] = tuple(senses)
        pairs[word] = pair
    categories = tuple(dataclasses.replace(c, brands=c.brands + tuple(extra[c.key]))
                       for c in tx.CATEGORIES)
    return Taxonomy(categories, brands, polysemy, tuple(words), pairs)
