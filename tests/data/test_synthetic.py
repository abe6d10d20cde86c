"""The synthetic catalog: same seed -> same bytes, the ground truth agrees with the clicks,
user profiles shift what is clicked, and `dpsr prepare` accepts every row."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.demo import synthetic_truth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Big enough that every product type has items; small enough for a unit test (~1 s).
MID = synthetic.SyntheticConfig(num_items=3000, num_users=600, num_interactions=40_000, seed=3)


@pytest.fixture(scope="module")
def mid_catalog(tmp_path_factory):
    return synthetic.generate(MID, str(tmp_path_factory.mktemp("mid")), log=lambda *_: None)


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _files(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = synthetic.SyntheticConfig(num_items=200, num_users=50, num_interactions=70_000, seed=5)
    a = synthetic.generate(cfg, str(tmp_path / "a"), log=lambda *_: None)
    b = synthetic.generate(cfg, str(tmp_path / "b"), log=lambda *_: None)
    files_a, files_b = _files(a.output_dir), _files(b.output_dir)
    assert sorted(files_a) == sorted([
        "items.tsv", "users.tsv", "interactions.tsv", "ground_truth.json",
        "ground_truth_queries.tsv", "ground_truth_users.tsv", "ground_truth_interactions.tsv"])
    for name in files_a:                     # 70k rows: two generation chunks
        assert files_a[name] == files_b[name], name
    c = synthetic.generate(cfg.__class__(**{**cfg.__dict__, "seed": 6}), str(tmp_path / "c"),
                           log=lambda *_: None)
    assert _files(c.output_dir)["interactions.tsv"] != files_a["interactions.tsv"]


def test_counts_and_aligned_ground_truth(mid_catalog):
    inter = _rows(mid_catalog.interactions_path)
    truth = _rows(os.path.join(mid_catalog.output_dir, synthetic_truth.INTERACTIONS_TRUTH_TSV))
    counts = mid_catalog.counts
    assert len(inter) == len(truth) == counts["rows"]
    assert counts["click"] == MID.num_interactions
    labels = [r["label"] for r in inter]
    assert labels.count("click") == counts["click"]
    assert labels.count("positive") == counts["positive"] > 0
    assert labels.count("negative") == counts["negative"] > 0
    assert len(_rows(mid_catalog.items_path)) == MID.num_items
    assert len(_rows(mid_catalog.users_path)) == MID.num_users
    stamps = [int(r["timestamp"]) for r in inter]
    assert stamps == sorted(stamps)
    # Human rows are anonymous; clicks are anonymous about anonymous_fraction of the time.
    assert all(r["user_id"] == "" for r in inter if r["label"] != "click")
    anon = np.mean([r["user_id"] == "" for r in inter if r["label"] == "click"])
    assert abs(anon - MID.anonymous_fraction) < 0.01


def test_clicked_items_match_their_intent(mid_catalog):
    items = {r["item_id"]: r for r in _rows(mid_catalog.items_path)}
    inter = _rows(mid_catalog.interactions_path)
    truth = _rows(os.path.join(mid_catalog.output_dir, synthetic_truth.INTERACTIONS_TRUTH_TSV))
    type_ok = brand_ok = brand_n = neg_same_type = negs = 0
    clicks = 0
    for row, t in zip(inter, truth):
        ptype, brand, _, _ = t["intent"].split("|")
        item = items[row["item_id"]]
        if row["label"] == "negative":
            negs += 1
            neg_same_type += item["product_type"] == ptype
            continue
        clicks += 1
        type_ok += item["product_type"] == ptype
        if brand != "*":
            brand_n += 1
            brand_ok += item["brand"] == brand
    assert type_ok == clicks                  # every product type has items at this size
    assert brand_ok / brand_n > 0.97
    assert neg_same_type == 0 and negs > 0    # human negatives are another type


def test_queries_english_chinese_typos_and_polysemy(mid_catalog):
    inter = _rows(mid_catalog.interactions_path)
    truth = _rows(os.path.join(mid_catalog.output_dir, synthetic_truth.INTERACTIONS_TRUTH_TSV))
    zh = [t["language"] == "zh" for t in truth]
    assert 0.15 < np.mean(zh) < 0.45
    assert any(any("\u4e00" <= c <= "\u9fff" for c in r["query"]) for r in inter)
    typos = [(r["query"], t["clean_query"]) for r, t in zip(inter, truth) if t["typo"] == "1"]
    assert len(typos) > 0.03 * len(inter)
    for query, clean in typos:
        assert query != clean and abs(len(query) - len(clean)) <= 1
    intents = synthetic_truth.load_query_intents(mid_catalog.output_dir)
    apple = {k.split("|")[0] for k in intents["apple"]}
    assert {"smartphone", "laptop", "apple_fruit"} <= apple
    assert {"computer_mouse", "cat_toy_mouse"} <= {k.split("|")[0] for k in intents["mouse"]}
    assert {"smartphone", "millet"} <= {k.split("|")[0] for k in intents["小米"]}


def test_profiles_shift_clicks(mid_catalog):
    truth = synthetic_truth.load_ground_truth(mid_catalog.output_dir)
    # Polysemy: low purchase power users mean the fruit far more often than high power users.
    for term, fruit in (("apple", "apple_fruit|*|*|*"), ("blackberry", "blackberry_fruit|*|*|*"),
                        ("小米", "millet|*|*|*")):
        sense = next(s for s in truth["polysemy"][term] if s["intent"] == fruit)
        share = sense["share_by_gender_and_purchase_power"]
        low = np.mean([share[k] for k in share if k.endswith("/low")])
        high = np.mean([share[k] for k in share if k.endswith("/high")])
        assert low > high + 0.15, (term, share)
    # Purchase power -> price tier, gender -> gendered items.
    items = {r["item_id"]: r for r in _rows(mid_catalog.items_path)}
    users = {r["user_id"]: r for r in _rows(mid_catalog.users_path)}
    tier_of = {"low": "budget", "mid": "mid", "high": "premium"}
    tier_hits, gender_hits, gender_n = [], 0, 0
    for row in _rows(mid_catalog.interactions_path):
        if row["label"] != "click" or not row["user_id"]:
            continue
        user, item = users[row["user_id"]], items[row["item_id"]]
        tier_hits.append(tier_of[user["purchase_power"]] == item["price_tier"])
        if item["gender"] and user["gender"]:
            gender_n += 1
            gender_hits += item["gender"] == {"m": "men", "f": "women"}[user["gender"]]
    assert np.mean(tier_hits) > 0.6            # 1/3 without preference
    assert gender_hits / gender_n > 0.6        # ~0.4 without preference


def test_prepare_accepts_every_row(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    for kind in ("items", "users", "interactions"):
        rep = spec.counts[kind]
        assert rep["rows_rejected"] == 0 and rep["rows_read"] == rep["rows_kept"] > 0
    assert set(spec.item_features) == {"brand", "category", "shop", "product_type", "color",
                                       "price_tier", "gender"}
    assert set(spec.user_features) == {"gender", "purchase_power", "age_bucket"}
    assert spec.counts["labels"]["negative"] > 0


def test_cli_generates_and_prepares(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "generate-synthetic", "--preset=tiny",
         "--num_interactions=2000", f"--output={tmp_path / 'cat'}",
         f"--layout={tmp_path / 'layout'}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = layout_lib.load_layout_spec(str(tmp_path / "layout"))
    assert spec.num_items == 500
    with open(tmp_path / "cat" / "ground_truth.json", encoding="utf-8") as f:
        assert json.load(f)["config"]["num_interactions"] == 2000
