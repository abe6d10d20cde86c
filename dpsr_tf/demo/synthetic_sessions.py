"""Sessions simulated over a synthetic catalog (dpsr_tf/demo/synthetic_catalog.py): an impressions file
with shown lists, position bias and user preference, for the DPR re-ranker.

    simulate_impressions(synthetic_dir, out_path, SessionSimConfig(num_sessions=20000))

The story, for each sampled click (query q, user u, item i, time t) of interactions.tsv:
  shown list   i, `same_type` items of i's product type and `same_category` items of its
               category (other types), shuffled into positions 0..n-1;
  attraction   a(j) = 1.0 for i (it is what q asked for); for a same-type item
               0.35 + 0.35 [price tier fits u's purchase power] + 0.15 [gender fits u:
               an item for everyone ("" or unisex) or for u's gender, men m, women f];
               0.05 for an item of another type;
  examination  e(p) = 1 / (1 + p)^position_power (users look less far down the list);
  label        click ~ Bernoulli(e(p) a(j)); a clicked item is ordered (label 2) with
               probability order_rate x a(j), else label 1; not clicked: 0.
Sessions without a click are dropped (they carry no preference). A pure function of the
config and the input files (same seed -> same bytes).
"""
import csv
import dataclasses
from typing import Dict

import numpy as np

_TIER_OF_POWER = {"low": "budget", "mid": "mid", "high": "premium"}
_ITEM_GENDER_OF_USER = {"m": "men", "f": "women"}


def gender_fits(item_gender: str, user_gender: str) -> bool:
    """The item is for everyone or for the user's gender (items say men/women/unisex, users
    m/f; an unknown user gender fits only items for everyone)."""
    return item_gender in ("", "unisex") or item_gender == _ITEM_GENDER_OF_USER.get(user_gender)


def attraction(logged: bool, same_type: bool, tier_fits: bool, gender_fit: bool) -> float:
    """a(j) of the module docstring: what the click model multiplies examination by."""
    if logged:
        return 1.0
    if same_type:
        return 0.35 + 0.35 * tier_fits + 0.15 * gender_fit
    return 0.05


@dataclasses.dataclass(frozen=True)
class SessionSimConfig:
    num_sessions: int = 20000
    same_type: int = 5
    same_category: int = 4
    position_power: float = 0.8
    order_rate: float = 0.3
    seed: int = 0


def _read(path: str):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return header, list(reader)


def simulate_impressions(synthetic_dir: str, out_path: str,
                         config: SessionSimConfig = SessionSimConfig(), log=print) -> Dict:
    """Writes an impressions file (docs/data_format.md) and returns counts."""
    rng = np.random.default_rng(config.seed)
    h, items = _read(f"{synthetic_dir}/items.tsv")
    col = {c: h.index(c) for c in ("item_id", "category", "product_type", "price_tier", "gender")}
    ids = [r[col["item_id"]] for r in items]
    row_of = {x: k for k, x in enumerate(ids)}
    ptype = np.array([r[col["product_type"]] for r in items])
    cat = np.array([r[col["category"]] for r in items])
    tier = np.array([r[col["price_tier"]] for r in items])
    gender = np.array([r[col["gender"]] for r in items])
    by_type = {t: np.flatnonzero(ptype == t) for t in np.unique(ptype)}
    by_cat = {c: np.flatnonzero(cat == c) for c in np.unique(cat)}
    h, users = _read(f"{synthetic_dir}/users.tsv")
    u_power = {r[h.index("user_id")]: r[h.index("purchase_power")] for r in users}
    u_gender = {r[h.index("user_id")]: r[h.index("gender")] for r in users}
    h, inter = _read(f"{synthetic_dir}/interactions.tsv")
    ic = {c: h.index(c) for c in ("query", "user_id", "item_id", "label", "timestamp")}
    clicks = [r for r in inter if r[ic["label"]] == "click" and r[ic["user_id"]]]
    pick = np.sort(rng.choice(len(clicks), min(config.num_sessions, len(clicks)), replace=False))
    counts = {"sessions": 0, "dropped_without_click": 0, "rows": 0}
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("session_id\tquery\titem_id\tlabel\tuser_id\ttimestamp\tposition\n")
        for s in pick:
            q, u, item, ts = (clicks[s][ic[c]] for c in ("query", "user_id", "item_id",
                                                          "timestamp"))
            i = row_of[item]
            same = by_type[ptype[i]][by_type[ptype[i]] != i]
            other = by_cat[cat[i]][ptype[by_cat[cat[i]]] != ptype[i]]
            shown = [i]
            shown += list(rng.choice(same, min(config.same_type, len(same)), replace=False))
            shown += list(rng.choice(other, min(config.same_category, len(other)),
                                     replace=False))
            shown = [shown[k] for k in rng.permutation(len(shown))]
            want_tier = _TIER_OF_POWER.get(u_power.get(u, ""), "")
            labels = []
            for pos, j in enumerate(shown):
                a = attraction(j == i, ptype[j] == ptype[i], tier[j] == want_tier,
                               gender_fits(gender[j], u_gender.get(u, "")))
                click = rng.random() < a / (1.0 + pos) ** config.position_power
                labels.append(0 if not click else 2 if rng.random() < config.order_rate * a
                              else 1)
            if max(labels) == 0:
                counts["dropped_without_click"] += 1
                continue
            counts["sessions"] += 1
            for pos, (j, lab) in enumerate(zip(shown, labels)):
                f.write(f"syn{s}\t{q}\t{ids[j]}\t{lab}\t{u}\t{ts}\t{pos}\n")
                counts["rows"] += 1
    if log:
        log(f"{out_path}: {counts['sessions']:,} sessions, {counts['rows']:,} impressions "
            f"({counts['dropped_without_click']:,} simulated sessions without a click dropped)")
    return counts
