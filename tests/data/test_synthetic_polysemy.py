"""The synthetic catalog with polysemous brands (`polysemous_brands=N`): the default catalog is
unchanged, each brand's two senses are item sets of one type in each of two categories, half the
bare names are held out by the default split, and different user segments click different
senses."""
import collections
import csv
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from dpsr_tf.data import split as split_lib
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.demo import synthetic_polysemy, synthetic_taxonomy
from dpsr_tf.demo import synthetic_truth
from dpsr_tf.demo.synthetic_world import World

POLY = synthetic.SyntheticConfig(num_items=3000, num_users=600, num_interactions=40_000, seed=3,
                                 polysemous_brands=24)
# md5 of the default catalog (num_items=300, num_users=60, num_interactions=4000, seed=7) as
# generated before polysemous brands existed: the option must leave it byte for byte.
DEFAULT_MD5 = {
    "ground_truth.json": "8aaad36cb9b604e6ebd4dac60736eb74",
    "ground_truth_interactions.tsv": "b698c1a95eaa46048184ed1d54ac6ab7",
    "ground_truth_queries.tsv": "62ae3974b8d73e31df3e48ef1fad07b2",
    "ground_truth_users.tsv": "0c98d97a182dacef246821a2b0569cc5",
    "interactions.tsv": "53ae5cebcb56b591db35511613b5f86a",
    "items.tsv": "f4d945aa35ff5406942d8ffc2c733bda",
    "users.tsv": "2ae0266cfde63781c5333ad7af5b7783",
}


def _quiet(*_):
    pass


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def poly_catalog(tmp_path_factory):
    out = synthetic.generate(POLY, str(tmp_path_factory.mktemp("poly")), log=_quiet)
    truth = synthetic_truth.load_ground_truth(out.output_dir)
    return out, truth


def test_default_catalog_unchanged(tmp_path):
    cfg = synthetic.SyntheticConfig(num_items=300, num_users=60, num_interactions=4000, seed=7)
    synthetic.generate(cfg, str(tmp_path), log=_quiet)
    got = {}
    for name in DEFAULT_MD5:
        with open(tmp_path / name, "rb") as f:
            got[name] = hashlib.md5(f.read()).hexdigest()
    assert got == DEFAULT_MD5
    assert "polysemous_brands" not in synthetic_truth.load_ground_truth(str(tmp_path))


def test_pseudo_words_alternate_held_out_and_are_new():
    taxonomy = synthetic_polysemy.taxonomy(40)
    words = taxonomy.added
    assert len(words) == len(set(words)) == 40
    assert [split_lib.is_eval_query(w) for w in words] == [j % 2 == 0 for j in range(40)]
    assert not set(words) & set(synthetic_taxonomy.BRANDS)
    assert synthetic_polysemy.taxonomy(0).polysemy is synthetic_taxonomy.POLYSEMY
    with pytest.raises(ValueError, match="polysemous_brands must be in"):
        synthetic_polysemy.taxonomy(synthetic_polysemy.MAX_BRANDS + 1)


def test_ground_truth_senses_are_items_of_one_type_per_category(poly_catalog):
    out, truth = poly_catalog
    added = truth["polysemous_brands"]
    assert len(added) == 24 and truth["config"]["polysemous_brands"] == 24
    assert len(truth["polysemy"]) == len(synthetic_taxonomy.POLYSEMY) + 24
    items = _rows(out.items_path)
    by_brand = collections.defaultdict(collections.Counter)
    for r in items:
        if r["brand"] in added:
            by_brand[r["brand"]][(r["product_type"], r["category"])] += 1
    assert [info["eval_split"] for info in added.values()] == [j % 2 == 0 for j in range(24)]
    for word, info in added.items():
        senses = truth["polysemy"][word]
        cats = [s["category"] for s in senses]
        assert cats == info["categories"] and cats[0] != cats[1]
        wanted = {(s["intent"].split("|")[0], s["category"]) for s in senses}
        assert all(s["intent"].split("|")[1] == word for s in senses)
        # Every item of the brand is one of its two senses, each sense a set of >= 15 items
        # (3000 items; the brands hold half of their categories' items).
        assert set(by_brand[word]) == wanted, word
        assert min(by_brand[word].values()) >= 15, (word, by_brand[word])


def test_first_sense_is_the_popular_one(poly_catalog):
    _, truth = poly_catalog
    clicks = [[s["clicks"] for s in truth["polysemy"][w]] for w in truth["polysemous_brands"]]
    first, second = (sum(c[j] for c in clicks) for j in (0, 1))
    # Weight 0.3 against the second sense; segment tilts move single brands either way.
    assert first > 1.5 * second, (first, second)
    assert sum(c[0] > c[1] for c in clicks) >= 18


def test_held_out_bare_names_only_in_eval_and_learnable_from_train(poly_catalog):
    out, truth = poly_catalog
    added = {w for w, info in truth["polysemous_brands"].items() if info["eval_split"]}
    assert len(added) == 12
    inter = _rows(out.interactions_path)
    meta = _rows(os.path.join(out.output_dir, synthetic_truth.INTERACTIONS_TRUTH_TSV))
    bare = collections.Counter(r["query"] for r in inter if r["query"] in added)
    assert set(bare) == added and min(bare.values()) >= 30
    train_queries = {r["query"] for r in inter if not split_lib.is_eval_query(r["query"])}
    assert not train_queries & added
    # No typo variant of a bare name (it would reach training under another spelling).
    assert not [m for m in meta if m["clean_query"] in added and m["typo"] == "1"]
    # Each name is seen in training inside longer queries and in titles.
    for word in added:
        assert any(q.split(" ")[0] == word for q in train_queries), word
    titles = {w.lower() for r in _rows(out.items_path) for w in r["title"].split()}
    assert added <= titles


def test_user_segments_click_different_senses(poly_catalog):
    out, truth = poly_catalog
    power = {r["user_id"]: r["purchase_power"] for r in _rows(out.users_path)}
    inter = _rows(out.interactions_path)
    category = {r["item_id"]: r["category"] for r in _rows(out.items_path)}
    # Brands whose first category tilts to high purchase power and second to low.
    high_low = {w for w, info in truth["polysemous_brands"].items()
                if tuple(info["categories"]) in {("phones", "fruit"), ("computers", "grains"),
                                                 ("phones", "grains"), ("computers", "pets")}}
    assert len(high_low) >= 6
    first = collections.Counter()
    total = collections.Counter()
    for r in inter:
        if r["query"] in high_low and r["user_id"] and r["label"] == "click":
            p = power[r["user_id"]]
            total[p] += 1
            first[p] += category[r["item_id"]] == truth["polysemous_brands"][r["query"]][
                "categories"][0]
    share = {p: first[p] / total[p] for p in ("low", "high")}
    assert share["high"] > share["low"] + 0.3, share


def test_same_seed_same_bytes(tmp_path):
    cfg = synthetic.SyntheticConfig(num_items=400, num_users=80, num_interactions=5000, seed=2,
                                    polysemous_brands=12)
    digests = []
    for name in ("a", "b"):
        synthetic.generate(cfg, str(tmp_path / name), log=_quiet)
        digests.append({f: hashlib.md5((tmp_path / name / f).read_bytes()).hexdigest()
                        for f in sorted(os.listdir(tmp_path / name))})
    assert digests[0] == digests[1]
    with open(tmp_path / "a" / synthetic_truth.GROUND_TRUTH_JSON, encoding="utf-8") as f:
        assert len(json.load(f)["polysemous_brands"]) == 12


# The skewed world (minor_sense_weight, polysemous_brand_share): the paper's "apple" case.
SKEWED = dataclasses.replace(POLY, minor_sense_weight=0.1, polysemous_brand_share=0.9)
# md5 of a polysemous catalog generated before the two options existed: leaving them unset
# must keep it byte for byte.
POLY12_MD5 = {
    "ground_truth.json": "099d1ad92a579c585626bfcad4687d74",
    "ground_truth_interactions.tsv": "81236fba942d2e428a925ffeca1e52cb",
    "ground_truth_queries.tsv": "fe8d2d7cf2ef12b8a02097ce8d39f696",
    "ground_truth_users.tsv": "f4257ec3f9d68a48e04410f493cb17f4",
    "interactions.tsv": "2cbf7d8803226701c9194eefe48201ae",
    "items.tsv": "f8c9fe897e43d67c8f59d5f14fbdd526",
    "users.tsv": "1a7f229932af4c383a4e87b34bb25aef",
}


@pytest.fixture(scope="module")
def skewed_catalog(tmp_path_factory):
    out = synthetic.generate(SKEWED, str(tmp_path_factory.mktemp("skewed")), log=_quiet)
    return out, synthetic_truth.load_ground_truth(out.output_dir)


def test_polysemous_catalog_unchanged_without_the_skew_options(tmp_path):
    cfg = synthetic.SyntheticConfig(num_items=400, num_users=80, num_interactions=5000, seed=2,
                                    polysemous_brands=12)
    synthetic.generate(cfg, str(tmp_path), log=_quiet)
    got = {f: hashlib.md5((tmp_path / f).read_bytes()).hexdigest() for f in POLY12_MD5}
    assert got == POLY12_MD5
    config = synthetic_truth.load_ground_truth(str(tmp_path))["config"]
    assert "minor_sense_weight" not in config and "polysemous_brand_share" not in config


@pytest.mark.parametrize("kwargs, match", [
    (dict(polysemous_brands=4, minor_sense_weight=0.0), "minor_sense_weight must be in"),
    (dict(polysemous_brands=4, polysemous_brand_share=1.5), "polysemous_brand_share must be in"),
    (dict(minor_sense_weight=0.1), "set polysemous_brands > 0"),
])
def test_skew_options_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.SyntheticConfig(**kwargs)


def test_minor_sense_weight_in_brand_choice_hand_worked():
    plain, skewed = World(24), World(24, minor_sense_weight=0.1)
    fruit = [c.key for c in plain.categories].index("fruit")
    word = plain.added_brands[0]   # brand 0: phones, then fruit (its minor sense)
    assert plain.added_categories[word] == ("phones", "fruit")
    pos = plain.cat_brands[fruit].index(plain.brand_index[word])

    def share(world, power):
        cum = world.brand_cum[power, fruit]
        return cum[pos] - (cum[pos - 1] if pos else 0.0)

    # Low purchase power: fruit's 8 brands weigh 1 each, its one low-tier brand 3: total 10,
    # the brand 1/10. With the option, fruit is the second category of 4 of the 24 brands
    # (pairs 0 and 4, cycled every 12), each weighing 0.1: total 10 - 4 + 0.4 = 6.4.
    assert share(plain, 0) == pytest.approx(1 / 10)
    assert share(skewed, 0) == pytest.approx(0.1 / 6.4)
    phones = [c.key for c in plain.categories].index("phones")
    np.testing.assert_allclose(skewed.brand_cum[:, phones], plain.brand_cum[:, phones])
    assert skewed.sense_weight[plain.poly_terms.index(word), :2].tolist() == [1.0, 0.1]
    assert plain.sense_weight[plain.poly_terms.index(word), :2].tolist() == [1.0, 0.3]


def test_skewed_world_senses_are_large_and_clicks_favour_the_first(poly_catalog,
                                                                   skewed_catalog):
    def brand_share(out, truth, share):
        """(observed, expected) share of the brands' categories' items the brands hold: the
        option's share s, plus the rest drawn among all the category's brands, a of n of them
        added: s + (1 - s) * a / n per category, weighted by its items."""
        added = truth["polysemous_brands"]
        rows = [r for r in _rows(out.items_path)
                if any(r["category"] in info["categories"] for info in added.values())]
        got = sum(r["brand"] in added for r in rows) / len(rows)
        per_cat = collections.Counter(r["category"] for r in rows)
        want = 0.0
        for cat, n_items in per_cat.items():
            brands = truth["taxonomy"][cat]["brands"]
            a = sum(b in added for b in brands)
            want += n_items * (share + (1 - share) * a / len(brands))
        return got, want / len(rows)

    def second_share(truth):
        clicks = [[s["clicks"] for s in truth["polysemy"][w]] for w in truth["polysemous_brands"]]
        return sum(c[1] for c in clicks) / sum(c[0] + c[1] for c in clicks)

    # Items: binomial over ~2,000 items, +- 0.03 (the expectations: about 0.94 and 0.67).
    for (out, truth), share in ((skewed_catalog, 0.9), (poly_catalog, 0.5)):
        got, want = brand_share(out, truth, share)
        assert got == pytest.approx(want, abs=0.03), (share, got, want)
    assert brand_share(*skewed_catalog, 0.9)[1] > 0.9
    # Bare-name clicks: the second sense weighs 0.1 against 0.3, so each user's odds of it fall
    # threefold; summed over users whose category affinities differ, the share falls by less
    # (users who favour the second category keep much of it): 0.35 -> 0.22 here.
    skewed, plain = second_share(skewed_catalog[1]), second_share(poly_catalog[1])
    assert skewed < 0.7 * plain, (skewed, plain)
