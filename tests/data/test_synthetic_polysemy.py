"""The synthetic catalog with polysemous brands (`polysemous_brands=N`): the default catalog is
unchanged, each brand's two senses are item sets of one type in each of two categories, half the
bare names are held out by the default split, and different user segments click different
senses."""
import collections
import csv
import hashlib
import json
import os

import pytest

from dpsr_tf.data import split as split_lib
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.demo import synthetic_polysemy, synthetic_taxonomy
from dpsr_tf.demo import synthetic_truth

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
