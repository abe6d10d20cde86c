"""Converters on the real datasets in ../shared/datasets (skipped when absent): exact row counts
checked against an independent count from the raw files, and `dpsr prepare` on every output."""
import collections
import csv
import hashlib
import os

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.converters import CONVERTERS, get_converter


def _convert_and_prepare(name, datasets_dir, tmp_path, **prepare_kwargs):
    src = os.path.join(datasets_dir, CONVERTERS[name][1])
    if not os.path.isdir(src):
        pytest.skip(f"dataset folder not found: {src}")
    result = get_converter(name).convert(src, str(tmp_path / "three_files"))
    spec = prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=result.items_path, users=result.users_path,
        interactions=result.interactions_path, output=str(tmp_path / "layout"),
        **prepare_kwargs), log=lambda *_: None)
    for kind in ("items", "users", "interactions"):
        if kind in spec.counts:
            assert spec.counts[kind]["rows_rejected"] == 0, spec.counts[kind]
    return src, result, spec


def test_home_depot(datasets_dir, tmp_path):
    src, result, spec = _convert_and_prepare("home_depot", datasets_dir, tmp_path,
                                             eval_min_gain=1.67)
    with open(f"{src}/train.csv", encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    rel = [float(r["relevance"]) for r in rows]
    n_pos = sum(x >= 2.33 - 1e-6 for x in rel)
    n_neg = sum(x <= 1.67 + 1e-6 for x in rel)
    assert (len(rows), n_pos, n_neg) == (74_067, 50_417, 11_900)
    assert result.counts["items"] == len({r["product_uid"] for r in rows}) == 54_667
    assert result.counts["interactions"] == n_pos + n_neg == 62_317
    assert spec.num_items == 54_667
    assert spec.counts["labels"] == {"click": 0, "positive": n_pos, "negative": n_neg}
    # Latin-1 text survives as the same characters (md5 of the UTF-8 encoding = dashboard).
    titles = set(layout_lib.load_item_table(spec).titles)
    assert any(not t.isascii() for t in titles)
    # Dashboard protocol: test queries with a relevant product (relevance >= 2.67) and their
    # graded gains (relevance - 1), computed straight from the CSV.
    want = collections.defaultdict(dict)
    for r, x in zip(rows, rel):
        q = r["search_term"]
        if int(hashlib.md5(q.encode("utf-8")).hexdigest(), 16) % 10 == 0 and x >= 2.67 - 1e-6:
            want[q][r["product_uid"]] = round(x - 1, 2)
    ev = eval_set_lib.load_eval_set(spec)
    ids = layout_lib.load_item_ids(spec)
    got = {}
    for i, q in enumerate(ev.queries):
        items, gains = ev.relevant(i)
        got[q] = {ids[j]: round(float(g), 2) for j, g in zip(items, gains)}
    assert len(got) == len(want)
    assert got == dict(want)
    assert all(split_lib.is_eval_query(q) for q in ev.queries)


def test_bestbuy(datasets_dir, tmp_path):
    src, result, spec = _convert_and_prepare("bestbuy", datasets_dir, tmp_path,
                                             split=split_lib.SplitConfig(method="time"))
    with open(f"{src}/sku_name.tsv", encoding="utf-8") as f:
        named = {line.split("\t")[0] for line in f if line.strip()}
    with open(f"{src}/clicks.csv", encoding="utf-8", newline="") as f:
        clicks = list(csv.DictReader(f))
    kept = [c for c in clicks if c["sku"] in named]
    assert (len(named), len(clicks), len(kept)) == (437, 42_365, 42_065)
    assert result.counts["interactions"] == len(kept)
    assert spec.num_items == len(named) and spec.num_users == len({c["user"] for c in clicks})
    assert spec.num_users == 38_024
    assert (spec.num_records["train"] + spec.num_records["eval"]
            + spec.num_records.get("validation", 0)) == len(kept)
    assert spec.num_records["pseudo"] == 16 * spec.num_items == spec.counts["pseudo_queries"]
    # Time split: every eval click is later than every train click.
    assert spec.num_records["eval"] >= 0.1 * len(kept)
    assert spec.counts["users_with_history"] == len({c["user"] for c in kept})


def test_movielens(datasets_dir, tmp_path):
    src, result, spec = _convert_and_prepare("movielens_100k", datasets_dir, tmp_path,
                                             split=split_lib.SplitConfig(method="time"))
    with open(f"{src}/ml-100k.inter", encoding="utf-8") as f:
        ratings = [int(float(line.split("\t")[2])) for line in list(f)[1:] if line.strip()]
    n_pos, n_neg = sum(r >= 4 for r in ratings), sum(r <= 2 for r in ratings)
    assert (len(ratings), n_pos, n_neg) == (100_000, 55_375, 17_480)
    assert result.counts["interactions"] == n_pos + n_neg
    assert (spec.num_items, spec.num_users) == (1_682, 943)
    assert spec.counts["labels"] == {"click": 0, "positive": n_pos, "negative": n_neg}
    assert set(spec.user_features) == {"age_bucket", "gender", "occupation"}
    assert spec.user_features["gender"] == 3 and spec.user_features["occupation"] == 22
    users = layout_lib.load_user_table(spec)
    assert users.vocabularies["age_bucket"][users.feature("age_bucket")[0]] == "18-24"  # age 24


def test_jdsearch(datasets_dir, tmp_path):
    src, result, spec = _convert_and_prepare("jdsearch", datasets_dir, tmp_path)
    with open(f"{src}/product_meta_data_sample.txt", encoding="utf-8") as f:
        wids = {line.split("\t")[0] for line in list(f)[1:] if line.strip()}
    expected = 0
    with open(f"{src}/user_behavior_data_sample.txt", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in list(f)[1:] if line.strip()]
    for q, cands, labels, hq, hw, _, _ in lines:
        expected += sum(1 for a, b in zip(hq.split("_"), hw.split("_")) if a != "-1" and b in wids)
        expected += sum(1 for c, l in zip(cands.split("_"), labels.split("_"))
                        if float(l) > 0 and c in wids)
        del q
    assert (len(wids), len(lines), expected) == (409, 3, 100)
    assert result.counts["interactions"] == expected == (
        spec.num_records["train"] + spec.num_records["eval"]
        + spec.num_records.get("validation", 0))
    assert spec.num_users == 3 and spec.num_items == 409
    assert set(spec.item_features) == {"brand", "category", "category_1", "category_2",
                                       "category_3", "shop"}
    rec = np.concatenate([layout_lib.read_records(spec, s) for s in spec.num_records
                          if s != "pseudo"])
    assert (rec["user_row"] >= 0).all() and set(np.unique(rec["gain"])) <= {1.0, 2.0, 3.0}
