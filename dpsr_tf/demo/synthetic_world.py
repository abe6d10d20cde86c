"""The synthetic catalog's taxonomy as integer arrays, and items grouped by any field subset.

synthetic_catalog.py draws every item, user and click from these arrays (vectorised, chunk by
chunk), so the generator never walks the taxonomy's Python objects per row.
"""
from typing import Dict, List, Optional

import numpy as np

from dpsr_tf.demo import synthetic_polysemy
from dpsr_tf.demo import synthetic_taxonomy as tx


class World:
    """Flattened taxonomy: categories, types, brands and colours as integer indices.

    polysemous_brands > 0 adds that many two-category brands (synthetic_polysemy);
    minor_sense_weight and brand_share reshape them (synthetic_polysemy.check_skew; None: the
    module's defaults, the catalog without them).
    """

    def __init__(self, polysemous_brands: int = 0, minor_sense_weight: Optional[float] = None,
                 brand_share: Optional[float] = None):
        synthetic_polysemy.check_skew(minor_sense_weight, brand_share)
        taxonomy = synthetic_polysemy.taxonomy(polysemous_brands)
        self.brands, self.polysemy = taxonomy.brands, taxonomy.polysemy
        self.added_brands, self.added_categories = taxonomy.added, taxonomy.added_categories
        self.categories = taxonomy.categories
        self.brand_keys = list(self.brands)
        self.brand_index = {k: i for i, k in enumerate(self.brand_keys)}
        self.types: List[tx.ProductType] = []
        self.type_cat: List[int] = []
        self.cat_types: List[List[int]] = []
        for c, cat in enumerate(self.categories):
            self.cat_types.append([])
            for t in cat.types:
                self.cat_types[-1].append(len(self.types))
                self.types.append(t)
                self.type_cat.append(c)
        self.type_index = {t.key: i for i, t in enumerate(self.types)}
        self.cat_brands = [[self.brand_index[b] for b in cat.brands] for cat in self.categories]
        self.num_cats, self.num_types = len(self.categories), len(self.types)
        self.num_brands, self.num_colors = len(self.brand_keys), len(tx.COLORS)
        self.cat_weight = np.array([c.weight for c in self.categories])
        self.cat_weight /= self.cat_weight.sum()
        self.type_cat_arr = np.array(self.type_cat)
        self.cat_ntypes = np.array([len(t) for t in self.cat_types])
        self.cat_type0 = np.array([t[0] for t in self.cat_types])
        self.cat_nbrands = np.array([len(b) for b in self.cat_brands])
        width = self.cat_nbrands.max()
        self.cat_brand_table = np.zeros([self.num_cats, width], np.int64)
        for c, brands in enumerate(self.cat_brands):
            self.cat_brand_table[c, :len(brands)] = brands
        self.cat_colored = np.array([c.colored for c in self.categories])
        self.cat_gendered = np.array([c.gendered for c in self.categories])
        self.type_women_only = np.array([t.gender == "women" for t in self.types])
        self.brand_tier = np.array([self.brands[b].tier_bias for b in self.brand_keys])
        # Brand choice weights by the user's purchase power: 3x for brands of the user's tier;
        # with minor_sense_weight, a polysemous brand in its second category weighs that much
        # less (every click on its minor sense is rarer, not only the bare name's).
        minor = np.ones([self.num_brands, self.num_cats])
        if minor_sense_weight is not None:
            cat_index = {c.key: i for i, c in enumerate(self.categories)}
            for word in self.added_brands:
                second = cat_index[self.added_categories[word][1]]
                minor[self.brand_index[word], second] = minor_sense_weight
        self.brand_cum = np.zeros([len(tx.PURCHASE_POWER), self.num_cats, width])
        for p in range(len(tx.PURCHASE_POWER)):
            for c, brands in enumerate(self.cat_brands):
                w = np.array([3.0 if self.brand_tier[b] == p else 1.0 for b in brands])
                if minor_sense_weight is not None:
                    w = w * minor[brands, c]
                self.brand_cum[p, c, :len(brands)] = np.cumsum(w / w.sum())
                self.brand_cum[p, c, len(brands):] = 1.0
        # A polysemous brand sells one type per category: [brand, category] -> type (-1: any).
        self.brand_cat_type = np.full([self.num_brands, self.num_cats], -1, np.int64)
        self.added_brand = np.zeros(self.num_brands, bool)
        for word in self.added_brands:
            b = self.brand_index[word]
            self.added_brand[b] = True
            for sense in self.polysemy[word]:
                t = self.type_index[sense.type_key]
                self.brand_cat_type[b, self.type_cat[t]] = t
        # Polysemous terms.
        self.poly_terms = list(self.polysemy)
        self.poly_en = [i for i, t in enumerate(self.poly_terms) if t.isascii()]
        self.poly_zh = [i for i, t in enumerate(self.poly_terms) if not t.isascii()]
        max_senses = max(len(s) for s in self.polysemy.values())
        self.sense_type = np.full([len(self.poly_terms), max_senses], -1, np.int64)
        self.sense_brand = np.full([len(self.poly_terms), max_senses], -1, np.int64)
        for i, term in enumerate(self.poly_terms):
            for j, sense in enumerate(self.polysemy[term]):
                self.sense_type[i, j] = self.type_index[sense.type_key]
                if sense.brand:
                    self.sense_brand[i, j] = self.brand_index[sense.brand]
        self.sense_cat = np.where(self.sense_type >= 0, self.type_cat_arr[self.sense_type], -1)
        self.poly_added = np.array([t in taxonomy.added_categories for t in self.poly_terms])
        # Click weight of each sense (the added brands' second sense is the rarer one).
        self.sense_weight = np.ones(self.sense_type.shape)
        self.sense_weight[self.poly_added, 1] = (synthetic_polysemy.SECOND_SENSE_WEIGHT
                                                 if minor_sense_weight is None
                                                 else minor_sense_weight)
        # The added brands of each category, drawn for brand_share of its items.
        self.brand_share = synthetic_polysemy.BRAND_SHARE if brand_share is None else brand_share
        added = [[self.brand_index[b] for b in cat.brands if b in taxonomy.added_categories]
                 for cat in self.categories]
        self.cat_nadded = np.array([len(a) for a in added])
        self.cat_added_table = np.zeros([self.num_cats, max(1, self.cat_nadded.max())], np.int64)
        for c, brands in enumerate(added):
            self.cat_added_table[c, :len(brands)] = brands

    def intent(self, t: int, b: int, col: int, g: int) -> str:
        return "|".join((self.types[t].key, self.brand_keys[b] if b >= 0 else "*",
                         tx.COLORS[col][0] if col >= 0 else "*",
                         tx.GENDERS[g] if g >= 0 else "*"))


# Field bits of the item group index.
CATEGORY, TYPE, BRAND, COLOR, TIER, GENDER = 1, 2, 4, 8, 16, 32


class ItemIndex:
    """Items grouped by any subset of (category, type, brand, colour, tier, gender)."""

    def __init__(self, world: World, fields: Dict[int, np.ndarray]):
        self._fields = fields
        self._radix = {CATEGORY: world.num_cats, TYPE: world.num_types, BRAND: world.num_brands,
                       COLOR: world.num_colors + 1, TIER: 3, GENDER: 3}
        self._groups = {}

    def _key(self, mask: int, values: Dict[int, np.ndarray], n: int) -> np.ndarray:
        key = np.zeros(n, np.int64)
        for bit in (CATEGORY, TYPE, BRAND, COLOR, TIER, GENDER):
            if mask & bit:
                key = key * self._radix[bit] + values[bit]
        return key

    def _group(self, mask: int):
        if mask not in self._groups:
            n = len(self._fields[CATEGORY])
            key = self._key(mask, self._fields, n)
            order = np.argsort(key, kind="stable")
            self._groups[mask] = (key[order], order)
        return self._groups[mask]

    def sample(self, masks: List[np.ndarray], values: Dict[int, np.ndarray],
               u: np.ndarray) -> np.ndarray:
        """For each row, an item from the first non-empty group of its mask sequence.

        Args:
          masks: per step, [n] int masks (the last step should be 0 = any item).
          values: field bit -> [n] wanted values.
          u: [n] uniform draws in [0, 1).
        """
        n = len(u)
        out = np.full(n, -1, np.int64)
        for step in masks:
            todo = np.nonzero(out < 0)[0]
            if not len(todo):
                break
            for mask in np.unique(step[todo]):
                rows = todo[step[todo] == mask]
                keys, order = self._group(int(mask))
                want = self._key(int(mask), {b: v[rows] for b, v in values.items()}, len(rows))
                lo = np.searchsorted(keys, want, "left")
                hi = np.searchsorted(keys, want, "right")
                ok = hi > lo
                pick = lo + np.floor(u[rows] * (hi - lo)).astype(np.int64)
                out[rows[ok]] = order[np.minimum(pick[ok], len(order) - 1)]
        return out
