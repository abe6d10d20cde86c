"""Cross-validation folds and small logs cut in `dpsr prepare`, without rewriting the data.

--split_fold=F --split_modulus=N: eval iff int(md5(query)) % N == F, checked against hashlib for
every query; the N folds partition the queries. --max_train_queries=N: exactly N train queries
kept with all their interactions, eval untouched, deterministic per seed.
"""
import collections
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_QUERIES = 120


def _md5_mod(query, n):
    """The independent reference: the rule as the issue states it."""
    return int(hashlib.md5(query.encode("utf-8")).hexdigest(), 16) % n


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Seeded three files: 30 items, 6 users, NUM_QUERIES queries (ASCII and CJK) with 1-4
    click/positive interactions each (no negatives, so every interaction is a train/eval record).

    Returns:
      (items path, users path, interactions path, rows [(query, item_id, label)]).
    """
    rng = np.random.RandomState(3)
    out = tmp_path_factory.mktemp("fold_files")
    items = out / "items.tsv"
    items.write_text("item_id\ttitle\tbrand\n" + "".join(
        f"i{r}\tproduct {r} w{r % 7} 商品{r}\tb{r % 3}\n" for r in range(30)), encoding="utf-8")
    users = out / "users.tsv"
    users.write_text("user_id\tgender\n" + "".join(f"u{u}\t{'fm'[u % 2]}\n" for u in range(6)),
                     encoding="utf-8")
    rows = []
    for q in range(NUM_QUERIES):
        query = f"query {q} w{q % 7}" if q % 4 else f"查询 {q}"
        for _ in range(rng.randint(1, 5)):
            rows.append((query, f"i{rng.randint(30)}", "click" if rng.rand() < 0.8 else "positive",
                         f"u{rng.randint(6)}"))
    order = rng.permutation(len(rows))            # queries interleaved in the file
    rows = [rows[i] for i in order]
    inter = out / "interactions.tsv"
    inter.write_text("query\titem_id\tlabel\tuser_id\ttimestamp\n" + "".join(
        f"{q}\t{i}\t{l}\t{u}\t{t}\n" for t, (q, i, l, u) in enumerate(rows)), encoding="utf-8")
    return str(items), str(users), str(inter), rows


def _prepare(files, out, **kwargs):
    """prepare of the files; without a validation split unless asked (these tests count every
    non-eval query as train; tests/data/test_validation_split.py covers the carve)."""
    items, users, inter, _ = files
    kwargs.setdefault("validation_fraction", 0.0)
    lines = []
    spec = prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=items, users=users, interactions=inter, output=str(out), **kwargs),
        log=lines.append)
    return spec, "\n".join(lines)


def _split_queries(spec, split):
    queries = layout_lib.load_queries(spec)
    rows = layout_lib.read_records(spec, split)["query_row"]
    return collections.Counter(queries[r] for r in rows)


def test_fold_mask_equals_md5_for_every_query_and_folds_partition(files):
    queries = sorted({q for q, _, _, _ in files[3]})
    masks = np.stack([split_lib.eval_queries_mask(queries, 5, f) for f in range(5)])
    for f in range(5):
        assert masks[f].tolist() == [_md5_mod(q, 5) == f for q in queries]
        assert [split_lib.is_eval_query(q, 5, f) for q in queries] == masks[f].tolist()
    assert (masks.sum(axis=0) == 1).all()           # each query in exactly one fold
    assert all(masks[f].any() for f in range(5))    # 120 queries: no fold is empty


def test_prepared_folds_hold_out_md5_residues_and_partition_the_queries(files, tmp_path):
    all_queries = {q for q, _, _, _ in files[3]}
    per_query = collections.Counter(q for q, _, _, _ in files[3])
    held_out = []
    for fold in range(5):
        spec, log = _prepare(files, tmp_path / f"fold{fold}",
                             split=split_lib.SplitConfig(modulus=5, fold=fold))
        eval_q, train_q = _split_queries(spec, "eval"), _split_queries(spec, "train")
        want = {q for q in all_queries if _md5_mod(q, 5) == fold}
        assert set(eval_q) == want
        assert set(train_q) == all_queries - want
        # Every interaction of a query is on its side (eval untouched, nothing dropped).
        assert eval_q + train_q == per_query
        rule = f"eval iff int(md5(query.encode('utf-8')).hexdigest(), 16) % 5 == {fold}"
        assert spec.split == {"method": "query_hash", "modulus": 5, "fold": fold, "rule": rule}
        assert rule in log
        with open(os.path.join(spec.layout_dir, layout_lib.LAYOUT_JSON), encoding="utf-8") as f:
            assert json.load(f)["prepare_config"]["split"]["fold"] == fold
        held_out.append(set(eval_q))
    assert set().union(*held_out) == all_queries
    assert sum(len(h) for h in held_out) == len(all_queries)     # disjoint


def test_fold_zero_is_the_dashboard_rule(files, tmp_path):
    default, _ = _prepare(files, tmp_path / "default")
    fold0, _ = _prepare(files, tmp_path / "fold0", split=split_lib.SplitConfig(fold=0))
    for split in ("train", "eval"):
        assert _split_queries(default, split) == _split_queries(fold0, split)
    assert default.split["rule"].endswith("% 10 == 0")


@pytest.mark.parametrize("modulus,fold", [(5, 5), (5, -1), (2, 7), (10, 10)])
def test_fold_out_of_range_is_an_error(modulus, fold):
    with pytest.raises(ValueError, match=rf"split fold must be in \[0, {modulus}\).*got {fold}"):
        split_lib.SplitConfig(modulus=modulus, fold=fold)


def test_fold_needs_the_query_hash_split():
    with pytest.raises(ValueError, match="needs method 'query_hash'"):
        split_lib.SplitConfig(method="time", fold=1)


@pytest.mark.parametrize("args,message", [
    (["--split_fold=5", "--split_modulus=5"], "--split_fold=5: must be in [0, --split_modulus=5)"),
    (["--split_fold=-1"], "--split_fold=-1: must be in [0, --split_modulus=10)"),
    (["--max_train_queries=-3"], "--max_train_queries=-3: must be >= 0"),
])
def test_cli_rejects_bad_fold_and_max_train_queries(files, tmp_path, args, message):
    items, users, inter, _ = files
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "prepare", f"--items={items}",
         f"--interactions={inter}", f"--output={tmp_path / 'layout'}"] + args,
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "layout").exists()


# ---------------------------------------------------------------------------------------------
# --max_train_queries

@pytest.fixture(scope="module")
def full_layout(files, tmp_path_factory):
    spec, _ = _prepare(files, tmp_path_factory.mktemp("full") / "layout",
                       split=split_lib.SplitConfig(modulus=5, fold=2))
    return spec


@pytest.mark.parametrize("keep", [1, 7, 40])
def test_max_train_queries_keeps_exactly_n_queries_with_all_their_interactions(
        files, full_layout, tmp_path, keep):
    spec, log = _prepare(files, tmp_path / "small", max_train_queries=keep, seed=5,
                         split=split_lib.SplitConfig(modulus=5, fold=2))
    full_train = _split_queries(full_layout, "train")
    train = _split_queries(spec, "train")
    assert len(train) == keep
    assert set(train) <= set(full_train)
    # Every interaction of a kept query, counted from the input file (independent reference).
    per_query = collections.Counter(q for q, _, _, _ in files[3])
    assert train == {q: per_query[q] for q in train}
    # Eval untouched: the same records (file order) as without the flag.
    full_eval = layout_lib.read_records(full_layout, "eval")
    small_eval = layout_lib.read_records(spec, "eval")
    for field in ("query_row", "item_row", "user_row", "label_kind", "gain"):
        np.testing.assert_array_equal(small_eval[field], full_eval[field])
    # Reported in the log, the report and layout.json.
    info = spec.split["max_train_queries"]
    assert info == {"requested": keep, "seed": 5, "train_queries_before": len(full_train),
                    "train_queries_kept": keep,
                    "train_interactions_dropped": sum(full_train.values()) - sum(train.values())}
    assert spec.counts["splits"]["train"]["queries"] == keep
    assert spec.num_records["train"] == sum(train.values())
    note = f"--max_train_queries={keep} (seed 5): kept {keep:,} of {len(full_train):,}"
    assert note in log
    assert note in " ".join(spec.counts["interactions"]["notes"])
    with open(spec.path(layout_lib.REPORT_TXT), encoding="utf-8") as f:
        assert note in f.read()


def test_max_train_queries_is_deterministic_per_seed_and_nested(files, tmp_path):
    def kept(name, keep, seed):
        spec, _ = _prepare(files, tmp_path / name, max_train_queries=keep, seed=seed)
        return set(_split_queries(spec, "train"))

    a, b = kept("a", 10, seed=0), kept("b", 10, seed=0)
    assert a == b
    assert kept("c", 10, seed=1) != a               # 10 of ~108 queries: another seed differs
    assert kept("d", 4, seed=0) < a                 # for one seed a smaller log is a subset


def test_sample_train_queries_ignores_file_order_and_repeats():
    texts = [f"q{i}" for i in range(50)]
    rows = np.repeat(np.arange(50), 3)
    got = split_lib.sample_train_queries(texts, rows, 8, seed=9)
    assert len(got) == 8 and len(set(got.tolist())) == 8
    # The same queries at other rows (another file order) -> the same texts are chosen.
    perm = np.random.RandomState(0).permutation(50)
    shuffled = [texts[p] for p in perm]                   # row r holds texts[perm[r]]
    got2 = split_lib.sample_train_queries(shuffled, np.arange(50), 8, seed=9)
    assert sorted(shuffled[r] for r in got2) == sorted(texts[r] for r in got)


@pytest.mark.parametrize("keep", [0, 500])
def test_max_train_queries_zero_or_above_the_count_keeps_all(files, full_layout, tmp_path,
                                                             keep):
    spec, _ = _prepare(files, tmp_path / "all", max_train_queries=keep,
                       split=split_lib.SplitConfig(modulus=5, fold=2))
    assert _split_queries(spec, "train") == _split_queries(full_layout, "train")


def test_negative_max_train_queries_is_an_error(files, tmp_path):
    with pytest.raises(ValueError, match="max_train_queries must be >= 0.*got -1"):
        _prepare(files, tmp_path / "bad", max_train_queries=-1)
