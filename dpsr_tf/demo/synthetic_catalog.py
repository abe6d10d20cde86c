"""A seeded synthetic e-commerce catalog with click logs and its ground truth.

`generate(SyntheticConfig(...), output_dir)` writes the three input files plus ground truth:

  items.tsv          item_id, title, brand, category, shop, product_type, color, price_tier,
                     gender ("" outside fashion/beauty)
  users.tsv          user_id, gender (m/f, 5% unknown), purchase_power (low/mid/high), age_bucket
  interactions.tsv   query, user_id, item_id, label, timestamp     (in time order)
  ground_truth.json  config, counts, the taxonomy (types, names, synonyms, brands), the
                     polysemous terms with their senses, how profiles tilt interest, and for
                     each polysemous query the click share of each sense by user segment
  ground_truth_queries.tsv       clean query -> its intents with counts (typos map to the clean
                                 query they came from)
  ground_truth_users.tsv         user_id, profile, language, category affinities (top 5)
  ground_truth_interactions.tsv  line-aligned with interactions.tsv: intent, clean query,
                                 polysemous term, typo, language, source (optional, large)

The generative story (docs/data_format.md, "Synthetic catalog"):
  items    category ~ popularity; product type, brand uniform in the category; price tier
           leans to the brand's tier; colour, gender (fashion/beauty), an attribute; the title
           says brand, model code, tier word, gender, colour, the type's name (30%: a synonym)
           and the attribute, in English or (30%) Chinese.
  users    gender, purchase power, age; category affinity = popularity x segment tilt
           (synthetic_taxonomy.CATEGORY_TILT) x personal gamma noise; 30% search mostly in
           Chinese.
  a click  user ~ activity; category ~ the user's affinity; type uniform; the query names the
           type (or a synonym), maybe a brand (chosen with the user's tier), colour or gender;
           8% of queries are a polysemous term whose sense follows the user's affinity; 8% of
           English queries get a typo. The clicked item matches what the query says and, with
           prob. tier_match / gender_match, the user's tier and gender.
  human    2% of clicks add an anonymous "positive" row for the same pair, 3% an anonymous
           "negative" row with an item of another type of the same category.

Output is a pure function of the config: same seed -> same bytes. Memory stays bounded (items
and interactions stream to disk in chunks); 1M items / 10M interactions take minutes.
"""
import collections
import dataclasses
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from dpsr_tf.data.converters.common import INTERACTIONS_TSV, ITEMS_TSV, USERS_TSV
from dpsr_tf.demo import synthetic_polysemy
from dpsr_tf.demo import synthetic_taxonomy as tx
from dpsr_tf.demo import synthetic_truth as truth_files
from dpsr_tf.demo.synthetic_world import (
    BRAND, CATEGORY, COLOR, GENDER, TIER, TYPE, ItemIndex, World)

_CHUNK = 1 << 16          # rows per generation chunk (fixed: part of the output definition)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic catalog.

    Attributes:
      num_items, num_users, num_interactions: sizes (interactions = click rows; human rows
        come on top).
      seed: the only source of randomness.
      zh_title_fraction: items with a Chinese title.
      zh_user_fraction: users who search in Chinese 85% of the time (others 5%).
      polysemous_fraction: clicks whose query is a polysemous term (apple, 苹果, mouse, ...).
      brand_mention, color_mention, gender_mention: how often a query names them.
      brand_only_fraction: of brand-naming queries, how many say only the brand.
      synonym_fraction: queries using a synonym instead of the type's name.
      title_synonym_fraction: titles using a synonym instead of the type's name.
      typo_fraction: English queries with one typo.
      anonymous_fraction: clicks written without user_id.
      human_positive_fraction, human_negative_fraction: extra human-labelled rows per click.
      tier_match, gender_match: probability that a click follows the user's purchase power
        tier / gender when the query does not pin them.
      start_time, duration_s: timestamps are spread evenly over this window.
      write_interaction_truth: write ground_truth_interactions.tsv (one line per row).
      polysemous_brands: add this many made-up brands that sell in two categories with
        different audiences (synthetic_polysemy); their bare names are ambiguous queries that
        the default split holds out. 0 = the taxonomy as written.
      minor_sense_weight: click weight of a polysemous brand's second sense against its first
        (1.0), on its bare name and on queries naming the brand in its second category; None:
        0.3 on the bare name only (synthetic_polysemy.SECOND_SENSE_WEIGHT).
      polysemous_brand_share: share of their categories' items the polysemous brands hold
        (split among a category's added brands); None: synthetic_polysemy.BRAND_SHARE (0.5).
    """

    num_items: int = 10_000
    num_users: int = 2_000
    num_interactions: int = 100_000
    seed: int = 0
    zh_title_fraction: float = 0.3
    zh_user_fraction: float = 0.3
    polysemous_fraction: float = 0.08
    brand_mention: float = 0.35
    color_mention: float = 0.2
    gender_mention: float = 0.15
    brand_only_fraction: float = 0.15
    synonym_fraction: float = 0.35
    title_synonym_fraction: float = 0.3
    typo_fraction: float = 0.08
    anonymous_fraction: float = 0.05
    human_positive_fraction: float = 0.02
    human_negative_fraction: float = 0.03
    tier_match: float = 0.7
    gender_match: float = 0.8
    start_time: int = 1_700_000_000
    duration_s: int = 30 * 86_400
    write_interaction_truth: bool = True
    polysemous_brands: int = 0
    minor_sense_weight: Optional[float] = None
    polysemous_brand_share: Optional[float] = None

    def __post_init__(self):
        for name in ("num_items", "num_users", "num_interactions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            if f.name.endswith(("_fraction", "_mention", "_match")):
                value = getattr(self, f.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{f.name} must be in [0, 1], got {value}")
        synthetic_polysemy.check_skew(self.minor_sense_weight, self.polysemous_brand_share)
        if not self.polysemous_brands and (self.minor_sense_weight is not None
                                           or self.polysemous_brand_share is not None):
            raise ValueError("minor_sense_weight and polysemous_brand_share shape the "
                             "polysemous brands: set polysemous_brands > 0 too")

    @classmethod
    def demo(cls, seed: int = 0) -> "SyntheticConfig":
        """The `make demo` default: 10k items, 2k users, 150k clicks (seconds to generate)."""
        return cls(num_items=10_000, num_users=2_000, num_interactions=150_000, seed=seed)


# ---------------------------------------------------------------------------------------------
# Text.

_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
_NEIGHBORS = {c: (_KEYBOARD[i - 1] if i > 0 else "") + (_KEYBOARD[i + 1] if i + 1 < 26 else "")
              for i, c in enumerate(_KEYBOARD)}
_MODEL_LETTERS = "ASGKMPRTVXZ"


def add_typo(text: str, op: int, r1: float, r2: float) -> str:
    """One typo in the longest-enough word: 0 swap, 1 drop, 2 double, 3 neighbour key."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha() and w.isascii()]
    if not candidates:
        return text
    wi = candidates[int(r1 * len(candidates))]
    w = words[wi]
    p = 1 + int(r2 * (len(w) - 2))           # keep the first letter
    if op == 0:
        w = w[:p] + w[p + 1] + w[p] + w[p + 2:] if p + 1 < len(w) else w[:p - 1] + w[p] + w[p - 1]
    elif op == 1:
        w = w[:p] + w[p + 1:]
    elif op == 2:
        w = w[:p] + w[p] + w[p:]
    else:
        near = _NEIGHBORS.get(w[p].lower(), "") or "e"
        w = w[:p] + near[int(r1 * 7919) % len(near)] + w[p + 1:]
    words[wi] = w
    return " ".join(words)


def _join(parts, sep=" ") -> str:
    return sep.join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Generation.

@dataclasses.dataclass
class SyntheticResult:
    """Paths and counts of a generated catalog."""

    output_dir: str
    counts: Dict[str, int]
    seconds: float

    @property
    def items_path(self) -> str:
        return os.path.join(self.output_dir, ITEMS_TSV)

    @property
    def users_path(self) -> str:
        return os.path.join(self.output_dir, USERS_TSV)

    @property
    def interactions_path(self) -> str:
        return os.path.join(self.output_dir, INTERACTIONS_TSV)


def item_id(row: int) -> str:
    return f"P{row:08d}"


def user_id(row: int) -> str:
    return f"U{row:07d}"


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _write_items(cfg: SyntheticConfig, world: World, out_dir: str, log):
    """Draws and writes the items; returns their fields (arrays), chunk by chunk."""
    n = cfg.num_items
    cat = np.empty(n, np.int64)
    typ = np.empty(n, np.int64)
    brand = np.empty(n, np.int64)
    color = np.empty(n, np.int64)
    tier = np.empty(n, np.int64)
    gender = np.empty(n, np.int64)
    tier_probs = np.array([[0.6, 0.3, 0.1], [0.25, 0.5, 0.25], [0.1, 0.3, 0.6]])
    tier_cum = np.cumsum(tier_probs, axis=1)
    cat_cum = np.cumsum(world.cat_weight)
    num_shops = max(1, n // 200)
    with open(os.path.join(out_dir, ITEMS_TSV), "w", encoding="utf-8", newline="\n") as f:
        f.write("item_id\ttitle\tbrand\tcategory\tshop\tproduct_type\tcolor\tprice_tier\tgender\n")
        for start in range(0, n, _CHUNK):
            k = min(_CHUNK, n - start)
            rng = _rng(cfg.seed, 1, start // _CHUNK)
            r = rng.random((k, 14))
            c = np.minimum(np.searchsorted(cat_cum, r[:, 0], "right"), world.num_cats - 1)
            t = world.cat_type0[c] + np.floor(r[:, 1] * world.cat_ntypes[c]).astype(np.int64)
            b = world.cat_brand_table[c, np.floor(r[:, 2] * world.cat_nbrands[c]).astype(np.int64)]
            if world.added_brands:   # the polysemous brands' share (its own stream)
                extra = _rng(cfg.seed, 4, start // _CHUNK).random((k, 2))
                take = (world.cat_nadded[c] > 0) & (extra[:, 0] < world.brand_share)
                pick = np.floor(extra[:, 1] * np.maximum(world.cat_nadded[c], 1)).astype(np.int64)
                b = np.where(take, world.cat_added_table[c, pick], b)
            t = np.where(world.brand_cat_type[b, c] >= 0, world.brand_cat_type[b, c], t)
            tr = (r[:, 3][:, None] > tier_cum[world.brand_tier[b]]).sum(1)
            col = np.where(world.cat_colored[c],
                           np.floor(r[:, 4] * world.num_colors).astype(np.int64), -1)
            g = np.where(world.cat_gendered[c],
                         np.where(r[:, 5] < 0.4, 0, np.where(r[:, 5] < 0.8, 1, 2)), 2)
            g = np.where(world.type_women_only[t], 1, g)
            zh = r[:, 6] < cfg.zh_title_fraction
            syn = r[:, 7] < cfg.title_synonym_fraction
            sl = slice(start, start + k)
            cat[sl], typ[sl], brand[sl], color[sl], tier[sl], gender[sl] = c, t, b, col, tr, g
            lines = []
            for i in range(k):
                ti, bi, ci, ki, gi = int(t[i]), int(b[i]), int(c[i]), int(col[i]), int(g[i])
                ptype, category, brand_obj = world.types[ti], world.categories[ci], world.brands[
                    world.brand_keys[bi]]
                attrs = category.attributes
                attr = attrs[int(r[i, 8] * len(attrs))]
                tier_words = tx.TIER_WORDS[tx.TIERS[tr[i]]]
                tier_word = tier_words[int(r[i, 9] * len(tier_words))]
                model = f"{_MODEL_LETTERS[int(r[i, 10] * 11)]}{1 + int(r[i, 11] * 98)}"
                gword = tx.GENDER_WORDS[tx.GENDERS[gi]] if category.gendered else ("", "")
                cword = tx.COLORS[ki] if ki >= 0 else ("", "")
                if zh[i]:
                    names = ptype.zh_synonyms if syn[i] and ptype.zh_synonyms else (ptype.zh,)
                    noun = names[int(r[i, 13] * 7) % len(names)]
                    title = _join([brand_obj.zh, model, tier_word[1], gword[1], cword[1], noun,
                                   attr[1]])
                else:
                    names = ptype.en_synonyms if syn[i] and ptype.en_synonyms else (ptype.en,)
                    noun = names[int(r[i, 13] * 7) % len(names)]
                    title = _join([brand_obj.en, model, tier_word[0].title(), gword[0].title(),
                                   cword[0].title(), noun.title(), attr[0]])
                shop = (f"{world.brand_keys[bi]}_official" if r[i, 12] < 0.5
                        else f"shop{int(r[i, 13] * num_shops):05d}")
                lines.append("\t".join((
                    item_id(start + i), title, world.brand_keys[bi], category.key, shop,
                    ptype.key, cword[0], tx.TIERS[tr[i]],
                    tx.GENDERS[gi] if category.gendered else "")))
            f.write("\n".join(lines))
            f.write("\n")
    log(f"  items: {n:,}")
    return {CATEGORY: cat, TYPE: typ, BRAND: brand,
            COLOR: np.where(color < 0, world.num_colors, color),
            TIER: tier, GENDER: gender}


def _make_users(cfg: SyntheticConfig, world: World, out_dir: str):
    n = cfg.num_users
    rng = _rng(cfg.seed, 2)
    gender = np.where(rng.random(n) < 0.5, 0, 1)                      # 0 m, 1 f
    gender_known = rng.random(n) >= 0.05
    power = np.searchsorted(np.cumsum([0.35, 0.45, 0.2]), rng.random(n), "right").clip(0, 2)
    age = np.floor(rng.random(n) * len(tx.AGE_BUCKETS)).astype(np.int64)
    zh = rng.random(n) < cfg.zh_user_fraction
    tilt = np.ones([n, world.num_cats])
    for c, cat in enumerate(world.categories):
        rules = tx.CATEGORY_TILT.get(cat.key, {})
        for p, name in enumerate(tx.PURCHASE_POWER):
            tilt[power == p, c] *= rules.get(name, 1.0)
        for g, name in enumerate(tx.USER_GENDERS):
            tilt[(gender == g) & gender_known, c] *= rules.get(name, 1.0)
    affinity = world.cat_weight[None, :] * tilt * rng.gamma(0.7, 1.0, size=(n, world.num_cats))
    affinity /= affinity.sum(1, keepdims=True)
    activity = rng.lognormal(0.0, 1.0, n)
    with open(os.path.join(out_dir, USERS_TSV), "w", encoding="utf-8", newline="\n") as f:
        f.write("user_id\tgender\tpurchase_power\tage_bucket\n")
        f.write("".join(
            f"{user_id(u)}\t{tx.USER_GENDERS[gender[u]] if gender_known[u] else ''}\t"
            f"{tx.PURCHASE_POWER[power[u]]}\t{tx.AGE_BUCKETS[age[u]]}\n" for u in range(n)))
    with open(os.path.join(out_dir, truth_files.USERS_TRUTH_TSV), "w", encoding="utf-8",
              newline="\n") as f:
        f.write("user_id\tgender\tpurchase_power\tage_bucket\tlanguage\ttop_categories\n")
        for u in range(n):
            top = np.argsort(-affinity[u], kind="stable")[:5]
            aff = ",".join(f"{world.categories[c].key}:{affinity[u, c]:.3f}" for c in top)
            f.write(f"{user_id(u)}\t{tx.USER_GENDERS[gender[u]] if gender_known[u] else ''}\t"
                    f"{tx.PURCHASE_POWER[power[u]]}\t{tx.AGE_BUCKETS[age[u]]}\t"
                    f"{'zh' if zh[u] else 'en'}\t{aff}\n")
    return {"gender": gender, "gender_known": gender_known, "power": power, "zh": zh,
            "affinity_cum": np.cumsum(affinity, axis=1), "affinity": affinity,
            "activity_cum": np.cumsum(activity) / activity.sum()}


class _QueryText:
    """Builds (and caches) the clean text of a query from its parts."""

    def __init__(self, world: World):
        self._world = world
        self._cache: Dict[tuple, str] = {}

    def regular(self, zh: bool, t: int, b: int, col: int, g: int, syn: int, brand_only: bool,
                compact: bool) -> str:
        key = (zh, t, b, col, g, syn, brand_only, compact)
        text = self._cache.get(key)
        if text is None:
            ptype = self._world.types[t]
            brand = self._world.brands[self._world.brand_keys[b]] if b >= 0 else None
            if zh:
                names = (ptype.zh,) + ptype.zh_synonyms
                noun = names[syn % len(names)] if syn else ptype.zh
                parts = [brand.zh if brand else "", tx.GENDER_WORDS[tx.GENDERS[g]][1] if g >= 0
                         else "", tx.COLORS[col][1] if col >= 0 else "", noun]
                text = (brand.zh if brand_only and brand else
                        _join(parts, "" if compact else " "))
            else:
                names = (ptype.en,) + ptype.en_synonyms
                noun = names[syn % len(names)] if syn else ptype.en
                parts = [brand.en.lower() if brand else "",
                         tx.GENDER_WORDS[tx.GENDERS[g]][0] if g >= 0 else "",
                         tx.COLORS[col][0] if col >= 0 else "", noun]
                text = brand.en.lower() if brand_only and brand else _join(parts)
            self._cache[key] = text
        return text


def generate(config: SyntheticConfig, output_dir: str, log=print) -> SyntheticResult:
    """Writes the synthetic catalog and its ground truth to output_dir (see module doc)."""
    start_time = time.monotonic()
    cfg = config
    os.makedirs(output_dir, exist_ok=True)
    world = World(cfg.polysemous_brands, cfg.minor_sense_weight, cfg.polysemous_brand_share)
    log(f"generating a synthetic catalog in {output_dir} (seed {cfg.seed})")
    item_fields = _write_items(cfg, world, output_dir, log)
    index = ItemIndex(world, item_fields)
    users = _make_users(cfg, world, output_dir)
    log(f"  users: {cfg.num_users:,}")
    texts = _QueryText(world)
    query_intents: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    poly_counts = np.zeros([len(world.poly_terms), world.sense_type.shape[1], 3, 3], np.int64)
    counts = collections.Counter()
    inter_f = open(os.path.join(output_dir, INTERACTIONS_TSV), "w", encoding="utf-8",
                   newline="\n")
    truth_f = (open(os.path.join(output_dir, truth_files.INTERACTIONS_TRUTH_TSV), "w",
                    encoding="utf-8", newline="\n") if cfg.write_interaction_truth else None)
    inter_f.write("query\tuser_id\titem_id\tlabel\ttimestamp\n")
    if truth_f:
        truth_f.write("intent\tclean_query\tpolysemous_term\ttypo\tlanguage\tsource\n")
    n_total = cfg.num_interactions
    last_log = time.monotonic()
    try:
        for start in range(0, n_total, _CHUNK):
            k = min(_CHUNK, n_total - start)
            rows, truth = _interaction_chunk(cfg, world, index, users, texts, start, k,
                                             query_intents, poly_counts, counts)
            inter_f.write("".join(rows))
            if truth_f:
                truth_f.write("".join(truth))
            if time.monotonic() - last_log > 5.0:
                last_log = time.monotonic()
                log(f"  interactions: {start + k:,} / {n_total:,}")
    finally:
        inter_f.close()
        if truth_f:
            truth_f.close()
    log(f"  interactions: {counts['rows']:,} rows ({counts['click']:,} clicks, "
        f"{counts['positive']:,} human positives, {counts['negative']:,} human negatives)")
    truth_files.write_query_truth(output_dir, query_intents)
    truth_files.write_ground_truth(cfg, world, output_dir, poly_counts, counts, len(query_intents))
    seconds = time.monotonic() - start_time
    log(f"  done in {seconds:.1f} s")
    result_counts = {"items": cfg.num_items, "users": cfg.num_users, **counts,
                     "clean_queries": len(query_intents)}
    return SyntheticResult(os.path.abspath(output_dir), result_counts, seconds)


def _interaction_chunk(cfg, world, index, users, texts, start, k, query_intents, poly_counts,
                       counts) -> Tuple[List[str], List[str]]:
    rng = _rng(cfg.seed, 3, start // _CHUNK)
    r = rng.random((k, 24))
    u = np.minimum(np.searchsorted(users["activity_cum"], r[:, 0], "right"), cfg.num_users - 1)
    anonymous = r[:, 1] < cfg.anonymous_fraction
    zh = np.where(users["zh"][u], r[:, 2] < 0.85, r[:, 2] < 0.05)
    poly = r[:, 3] < cfg.polysemous_fraction
    # Regular queries: category by affinity, type uniform (women-only types re-drawn once for
    # men), brand by the user's tier.
    cat = (users["affinity_cum"][u] < r[:, 4][:, None]).sum(1).clip(0, world.num_cats - 1)
    typ = world.cat_type0[cat] + np.floor(r[:, 5] * world.cat_ntypes[cat]).astype(np.int64)
    men = (users["gender"][u] == 0) & users["gender_known"][u]
    redraw = world.type_women_only[typ] & men
    typ = np.where(redraw, world.cat_type0[cat]
                   + np.floor(r[:, 6] * world.cat_ntypes[cat]).astype(np.int64), typ)
    power = users["power"][u]
    brand_pos = (world.brand_cum[power, cat] < r[:, 7][:, None]).sum(1)
    brand = world.cat_brand_table[cat, np.minimum(brand_pos, world.cat_nbrands[cat] - 1)]
    brand_req = r[:, 8] < cfg.brand_mention
    # A polysemous brand sells one type per category: a query naming it asks for that type.
    own_type = world.brand_cat_type[brand, cat]
    typ = np.where(brand_req & (own_type >= 0), own_type, typ)
    col_req = (r[:, 9] < cfg.color_mention) & world.cat_colored[cat]
    color = np.floor(r[:, 10] * world.num_colors).astype(np.int64)
    gendered = world.cat_gendered[cat]
    g_user = np.where(users["gender"][u] == 0, 0, 1)
    g_req = (r[:, 11] < cfg.gender_mention) & gendered & users["gender_known"][u] & ~(
        world.type_women_only[typ])
    # Polysemous queries: a term in the query language, the sense by the user's affinity.
    term = np.where(zh, np.array(world.poly_zh)[np.floor(r[:, 12] * len(world.poly_zh))
                                                .astype(np.int64)],
                    np.array(world.poly_en)[np.floor(r[:, 12] * len(world.poly_en))
                                            .astype(np.int64)])
    sense_cat = world.sense_cat[term]
    weights = np.where(sense_cat >= 0,
                       np.take_along_axis(users["affinity"][u], np.maximum(sense_cat, 0), 1),
                       0.0) * world.sense_weight[term]
    cum = np.cumsum(weights, 1) / weights.sum(1, keepdims=True)
    sense = (cum < r[:, 13][:, None]).sum(1).clip(0, world.sense_type.shape[1] - 1)
    sense = np.minimum(sense, (sense_cat >= 0).sum(1) - 1)
    sense_t = world.sense_type[term, sense]
    sense_b = world.sense_brand[term, sense]
    typ = np.where(poly, sense_t, typ)
    cat = world.type_cat_arr[typ]
    gendered = world.cat_gendered[cat]
    brand = np.where(poly, np.where(sense_b >= 0, sense_b, brand), brand)
    brand_req = np.where(poly, sense_b >= 0, brand_req)
    col_req &= ~poly
    g_req &= ~poly
    # The clicked item: what the query pins, then the user's tier and gender if possible.
    tier_pref = np.where(r[:, 14] < cfg.tier_match, power,
                         np.floor(r[:, 15] * 3).astype(np.int64))
    g_pref = np.where(r[:, 16] < cfg.gender_match, g_user, np.floor(r[:, 17] * 3).astype(np.int64))
    g_pref = np.where(users["gender_known"][u], g_pref, np.floor(r[:, 17] * 3).astype(np.int64))
    req = (TYPE | np.where(brand_req, BRAND, 0) | np.where(col_req, COLOR, 0)
           | np.where(g_req, GENDER, 0))
    pref = TIER | np.where(gendered, GENDER, 0)
    masks = [req | pref, req | TIER, req, req & ~COLOR, np.full(k, TYPE), np.full(k, CATEGORY),
             np.zeros(k, np.int64)]
    values = {CATEGORY: cat, TYPE: typ, BRAND: brand, COLOR: color, TIER: tier_pref,
              GENDER: np.where(g_req, g_user, g_pref)}
    item = index.sample(masks, values, r[:, 18])
    # Hard negatives for human-negative rows: another type of the same category.
    other = world.cat_type0[cat] + (typ - world.cat_type0[cat] + 1 + np.floor(
        r[:, 19] * np.maximum(world.cat_ntypes[cat] - 1, 1)).astype(np.int64)) % world.cat_ntypes[cat]
    neg_item = index.sample([np.full(k, TYPE), np.full(k, CATEGORY), np.zeros(k, np.int64)],
                            {CATEGORY: cat, TYPE: other}, r[:, 20])
    human_pos = r[:, 21] < cfg.human_positive_fraction
    human_neg = (r[:, 22] < cfg.human_negative_fraction) & (world.cat_ntypes[cat] > 1)
    typo = (r[:, 23] < cfg.typo_fraction) & ~zh
    op = rng.integers(0, 4, k)
    typo_r = rng.random((k, 3))
    syn = np.where(rng.random(k) < cfg.synonym_fraction, 1 + rng.integers(0, 3, k), 0)
    brand_only = (rng.random(k) < cfg.brand_only_fraction) & brand_req & ~col_req & ~g_req
    compact = rng.random(k) < 0.5
    # A polysemous brand's bare name gets no typo (a held-out one's variants would train).
    typo &= ~((poly & world.poly_added[term])
              | (~poly & brand_only & world.added_brand[brand]))
    ts = cfg.start_time + np.floor((start + np.arange(k) + rng.random(k)) * cfg.duration_s
                                   / cfg.num_interactions).astype(np.int64)
    np.add.at(poly_counts, (term[poly], sense[poly],
                            np.where(users["gender_known"][u[poly]], users["gender"][u[poly]], 2),
                            power[poly]), 1)
    rows, truth = [], []
    write_truth = cfg.write_interaction_truth
    poly_terms = world.poly_terms
    for i in range(k):
        t, ti = int(typ[i]), int(item[i])
        if poly[i]:
            clean = poly_terms[term[i]]
            intent = world.intent(t, int(sense_b[i]), -1, -1)
        else:
            b = int(brand[i]) if brand_req[i] else -1
            c = int(color[i]) if col_req[i] else -1
            g = int(g_user[i]) if g_req[i] else -1
            clean = texts.regular(bool(zh[i]), t, b, c, g, int(syn[i]), bool(brand_only[i]),
                                  bool(compact[i]))
            intent = world.intent(t, b, c, g)
        query = add_typo(clean, int(op[i]), typo_r[i, 0], typo_r[i, 1]) if typo[i] else clean
        query_intents[clean][intent] += 1
        user = "" if anonymous[i] else user_id(int(u[i]))
        stamp = int(ts[i])
        rows.append(f"{query}\t{user}\t{item_id(ti)}\tclick\t{stamp}\n")
        counts["click"] += 1
        if write_truth:
            truth.append(f"{intent}\t{clean}\t{poly_terms[term[i]] if poly[i] else ''}\t"
                         f"{int(query != clean)}\t{'zh' if zh[i] else 'en'}\tclick\n")
        if human_pos[i]:
            rows.append(f"{query}\t\t{item_id(ti)}\tpositive\t{stamp}\n")
            counts["positive"] += 1
            if write_truth:
                truth.append(f"{intent}\t{clean}\t{poly_terms[term[i]] if poly[i] else ''}\t"
                             f"{int(query != clean)}\t{'zh' if zh[i] else 'en'}\thuman\n")
        if human_neg[i] and neg_item[i] >= 0:
            rows.append(f"{query}\t\t{item_id(int(neg_item[i]))}\tnegative\t{stamp}\n")
            counts["negative"] += 1
            if write_truth:
                truth.append(f"{intent}\t{clean}\t{poly_terms[term[i]] if poly[i] else ''}\t"
                             f"{int(query != clean)}\t{'zh' if zh[i] else 'en'}\thuman\n")
    counts["rows"] += len(rows)
    counts["typo"] += int(typo.sum())
    counts["polysemous"] += int(poly.sum())
    counts["anonymous"] += int(anonymous.sum())
    return rows, truth
