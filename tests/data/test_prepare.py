"""dpsr prepare: every class of bad row is reported (count + file:line), headers are checked,
nothing is dropped silently, histories / eval sets match hand-worked values, output is
deterministic."""
import dataclasses
import gzip
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam.prepare_pipeline import BeamSettings
from dpsr_tf.data.schema import Reason

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ITEMS = ("item_id\ttitle\tbrand\n"
         "A\tApple iPhone 15\tapple\n"
         "B\tFresh apples 1kg\t\n"
         "C\tSamsung Galaxy S24\tsamsung\n")
USERS = "user_id\tgender\nu1\tf\nu2\tm\n"
INTER_HEADER = "query\tuser_id\titem_id\tlabel\ttimestamp\tgain\n"
GOOD_ROWS = ("apple\tu1\tA\tclick\t10\t\n"
             "apple\tu1\tB\tpositive\t20\t2\n"
             "galaxy phone\tu2\tC\tclick\t30\t\n"
             "galaxy phone\t\tA\tnegative\t40\t\n")


def _write(path, text, binary=False):
    with open(path, "wb") as f:
        f.write(text if binary else text.encode("utf-8"))
    return str(path)


def _prepare(tmp_path, items=ITEMS, users=USERS, inter=INTER_HEADER + GOOD_ROWS, **kwargs):
    kwargs.setdefault("max_reject_fraction", 1.0)
    # Pseudo-queries have their own tests; here the query table holds the logged queries only.
    kwargs.setdefault("pseudo_queries", pseudo_lib.PseudoQueryConfig(per_item=0))
    cfg = prepare_lib.PrepareConfig(
        items=_write(tmp_path / "items.tsv", items),
        users=_write(tmp_path / "users.tsv", users) if users is not None else None,
        interactions=_write(tmp_path / "inter.tsv", inter, binary=isinstance(inter, bytes)),
        output=str(tmp_path / "layout"), **kwargs)
    lines = []
    spec = prepare_lib.prepare(cfg, log=lines.append)
    return spec, "\n".join(lines)


def test_good_files_keep_every_row(tmp_path):
    spec, _ = _prepare(tmp_path)
    assert spec.counts["interactions"]["rows_read"] == 4
    assert spec.counts["interactions"]["rows_kept"] == 4
    assert spec.counts["labels"] == {"click": 2, "positive": 1, "negative": 1}
    assert spec.num_items == 3 and spec.num_users == 2 and spec.num_queries == 2
    assert spec.item_features == {"brand": 3}     # apple, samsung + unknown
    assert spec.user_features == {"gender": 3}
    # The train human negative moves to the per-query table; the other 3 are records.
    assert sum(spec.num_records.values()) + spec.counts["train_human_negatives"]["pairs"] == 4


def test_categorical_ids_by_count_then_value(tmp_path):
    items = ITEMS + "D\tSamsung tv\tsamsung\nE\tLG tv\tlg\n"
    spec, _ = _prepare(tmp_path, items=items)
    table = layout_lib.load_item_table(spec)
    # samsung x2 -> 1; apple, lg x1 -> 2, 3 (by value); the empty brand of B -> 0.
    assert table.vocabularies["brand"] == ["", "samsung", "apple", "lg"]
    assert table.feature("brand").tolist() == [2, 0, 1, 1, 3]


# One bad interaction row per case, appended after the 4 good rows (so it is line 6).
@pytest.mark.parametrize("row,reason,needle", [
    (b"\tu1\tA\tclick\t1\t\n", Reason.EMPTY_QUERY, "empty"),
    (b"   \tu1\tA\tclick\t1\t\n", Reason.EMPTY_QUERY, "empty"),
    (b"apple\tu1\tZZZ\tclick\t1\t\n", Reason.UNKNOWN_ITEM, "'ZZZ'"),
    (b"apple\tu9\tA\tclick\t1\t\n", Reason.UNKNOWN_USER, "'u9'"),
    (b"apple\tu1\tA\tmaybe\t1\t\n", Reason.BAD_LABEL, "'maybe'"),
    (b"apple\tu1\tA\t1\t1\t\n", Reason.BAD_LABEL, "'1'"),
    (b"apple\tu1\tA\tclick\tyesterday\t\n", Reason.BAD_TIMESTAMP, "'yesterday'"),
    (b"apple\tu1\tA\tclick\t\t\n", Reason.BAD_TIMESTAMP, "''"),
    (b"apple\tu1\tA\tclick\t1\t-1\n", Reason.BAD_GAIN, "'-1'"),
    (b"apple\tu1\tA\tclick\t1\tnan\n", Reason.BAD_GAIN, "'nan'"),
    (b"caf\xe9\tu1\tA\tclick\t1\t\n", Reason.BAD_UTF8, "0xe9"),
    (b"apple\tu1\tA\tclick\n", Reason.FIELD_COUNT, "4 fields"),
    (b"apple\tu1\tA\tclick\t1\t\textra\n", Reason.FIELD_COUNT, "tab inside a value"),
    (b"\n", Reason.BLANK_LINE, "blank"),
])
def test_each_bad_interaction_row_is_reported(tmp_path, row, reason, needle):
    inter = (INTER_HEADER + GOOD_ROWS).encode() + row
    spec, text = _prepare(tmp_path, inter=inter)
    rep = spec.counts["interactions"]
    assert rep["rows_read"] == 5
    assert rep["rows_kept"] == 4
    assert rep["rejected"] == {reason.value: 1}
    (example,) = rep["examples"][reason.value]
    assert example.startswith(f"{tmp_path / 'inter.tsv'}:6: ")
    assert needle in example
    # The printed report has the reason, the count and the example.
    assert f"rejected 1 x {reason.value}" in text and example in text


@pytest.mark.parametrize("items_extra,reason,needle", [
    ("A\tApple again\tapple\n", Reason.DUPLICATE_ITEM, "already defined at"),
    ("D\t   \tx\n", Reason.EMPTY_TITLE, "empty title"),
    (" D\tPadded id\tx\n", Reason.EMPTY_ID, "' D'"),
    ("\tNo id\tx\n", Reason.EMPTY_ID, "''"),
    ("D\tToo\tmany\tfields\n", Reason.FIELD_COUNT, "4 fields"),
])
def test_each_bad_item_row_is_reported(tmp_path, items_extra, reason, needle):
    spec, _ = _prepare(tmp_path, items=ITEMS + items_extra)
    rep = spec.counts["items"]
    assert (rep["rows_read"], rep["rows_kept"]) == (4, 3)
    assert rep["rejected"] == {reason.value: 1}
    (example,) = rep["examples"][reason.value]
    assert example.startswith(f"{tmp_path / 'items.tsv'}:5: ") and needle in example
    # The first definition of a duplicate id is the one kept.
    assert layout_lib.load_item_table(spec).titles[0] == "Apple iPhone 15"


def test_duplicate_user_is_reported(tmp_path):
    spec, _ = _prepare(tmp_path, users=USERS + "u1\tm\n")
    rep = spec.counts["users"]
    assert rep["rejected"] == {Reason.DUPLICATE_USER.value: 1}
    assert rep["examples"][Reason.DUPLICATE_USER.value][0].startswith(
        f"{tmp_path / 'users.tsv'}:4: ")


def test_rejected_item_cascades_with_its_reason(tmp_path):
    spec, _ = _prepare(tmp_path, items=ITEMS + "D\t\tx\n",
                       inter=INTER_HEADER + GOOD_ROWS + "apple\tu1\tD\tclick\t1\t\n")
    (example,) = spec.counts["interactions"]["examples"][Reason.UNKNOWN_ITEM.value]
    assert "its row was rejected" in example and "items.tsv:5" in example


def test_every_reason_at_once_counts_add_up(tmp_path):
    bad = [b"\tu1\tA\tclick\t1\t\n", b"apple\tu1\tZZZ\tclick\t1\t\n", b"apple\tu9\tA\tclick\t1\t\n",
           b"apple\tu1\tA\tmaybe\t1\t\n", b"caf\xe9\tu1\tA\tclick\t1\t\n",
           b"apple\tu1\tA\tclick\tnever\t\n", b"apple\tu1\tA\tclick\t1\t-3\n"] * 3
    spec, _ = _prepare(tmp_path, inter=(INTER_HEADER + GOOD_ROWS).encode() + b"".join(bad))
    rep = spec.counts["interactions"]
    assert rep["rows_read"] == 4 + 21 and rep["rows_kept"] == 4
    assert sorted(rep["rejected"].values()) == [3] * 7
    assert rep["rows_kept"] + rep["rows_rejected"] == rep["rows_read"]


def test_csv_quoting_and_gzip(tmp_path):
    items = 'item_id,title,brand\nA,"Apple iPhone 15, 256GB",apple\nB,"Fresh ""apples""",\n'
    inter = 'query,item_id,label\n"apple, phone",A,click\napples,B,click\n'
    (tmp_path / "items.csv").write_text(items, encoding="utf-8")
    with gzip.open(tmp_path / "inter.csv.gz", "wt", encoding="utf-8") as f:
        f.write(inter + 'bad,"unterminated,B,click\n')
    spec = prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=str(tmp_path / "items.csv"), interactions=str(tmp_path / "inter.csv.gz"),
        output=str(tmp_path / "layout"), max_reject_fraction=1.0,
        pseudo_queries=pseudo_lib.PseudoQueryConfig(per_item=0)), log=lambda *_: None)
    assert layout_lib.load_item_table(spec).titles == ["Apple iPhone 15, 256GB",
                                                       'Fresh "apples"']
    assert sorted(layout_lib.load_queries(spec)) == ["apple, phone", "apples"]
    assert spec.counts["interactions"]["rows_kept"] == 2
    assert spec.counts["interactions"]["rows_rejected"] == 1


@pytest.mark.parametrize("items,needle", [
    ("id\ttitle\nA\tx\n", "missing required column(s) ['item_id']"),
    ("item_id,title\nA,x\n", "wrong delimiter"),
    ("item_id\ttitle\ttitle\nA\tx\ty\n", "duplicate column(s) ['title']"),
    ("item_id\ttitle\t\nA\tx\ty\n", "have no name"),
    ("", "empty file"),
    ("item_id\ttitle\tBrand Name\nA\tx\ty\n", "cannot be a feature name"),
])
def test_malformed_header_stops_prepare(tmp_path, items, needle):
    with pytest.raises(schema.SchemaError, match="items.tsv:1: ") as e:
        _prepare(tmp_path, items=items)
    assert needle in str(e.value)


def test_missing_interaction_column_and_time_split(tmp_path):
    with pytest.raises(schema.SchemaError, match=r"missing required column\(s\) \['label'\]"):
        _prepare(tmp_path, inter="query\titem_id\napple\tA\n")
    with pytest.raises(schema.SchemaError, match="--split=time needs a timestamp"):
        _prepare(tmp_path, inter="query\titem_id\tlabel\napple\tA\tclick\n",
                 split=split_lib.SplitConfig(method="time"))


def test_too_many_rejections_stop(tmp_path):
    inter = INTER_HEADER + GOOD_ROWS + "apple\tu1\tZZZ\tclick\t1\t\n" * 5
    with pytest.raises(prepare_lib.PrepareError, match=r"5 of 9 rows rejected"):
        _prepare(tmp_path, inter=inter, max_reject_fraction=0.5)
    assert not os.path.exists(tmp_path / "layout")


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "prepare", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_exit_status_and_messages(tmp_path):
    items = _write(tmp_path / "items.tsv", ITEMS)
    inter = _write(tmp_path / "inter.tsv", "query\titem\tlabel\napple\tA\tclick\n")
    out = str(tmp_path / "layout")
    proc = _cli(f"--items={items}", f"--interactions={inter}", f"--output={out}")
    assert proc.returncode == 1
    assert "inter.tsv:1: the interactions file is missing required column(s) ['item_id']" in (
        proc.stderr)
    assert "Traceback" not in proc.stderr
    proc = _cli(f"--items={tmp_path / 'nope.tsv'}", f"--interactions={inter}", f"--output={out}")
    assert proc.returncode == 1 and "nope.tsv: no such file" in proc.stderr
    good = _write(tmp_path / "good.tsv", INTER_HEADER + GOOD_ROWS + "apple\tu1\tA\tmeh\t1\t\n")
    users = _write(tmp_path / "users.tsv", USERS)
    proc = _cli(f"--items={items}", f"--users={users}", f"--interactions={good}",
                f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "5 rows read, 4 kept, 1 rejected" in proc.stdout
    assert f"{good}:6: label 'meh'" in proc.stdout


def test_history_hand_worked(tmp_path):
    # u1: t=10 click A, t=20 positive B, t=20 click C (tie with B), t=30 negative A, t=40 click C
    # u2: t=5 click C.   history_end = number of the user's positives strictly earlier in time.
    inter = INTER_HEADER + ("q1\tu1\tA\tclick\t10\t\n" "q2\tu1\tB\tpositive\t20\t\n"
                            "q3\tu1\tC\tclick\t20\t\n" "q4\tu1\tA\tnegative\t30\t\n"
                            "q5\tu1\tC\tclick\t40\t\n" "q6\tu2\tC\tclick\t5\t\n"
                            "q7\t\tC\tclick\t1\t\n")
    spec, _ = _prepare(tmp_path, inter=inter)
    items, splits = layout_lib.load_user_histories(spec)
    ids = layout_lib.load_item_id_map(spec)
    # user rows: u1 = 0, u2 = 1 (users file order); sequence of u1: A, B, C, C (negative excluded)
    assert splits.tolist() == [0, 4, 5]
    assert items.tolist() == [ids["A"], ids["B"], ids["C"], ids["C"], ids["C"]]
    rec = np.concatenate([layout_lib.read_records(spec, s) for s in spec.splits])
    queries = layout_lib.load_queries(spec)
    end = {queries[r["query_row"]]: int(r["history_end"]) for r in rec}
    want = {"q1": 0, "q2": 1, "q3": 1, "q4": 3, "q5": 3, "q6": 0, "q7": 0}
    if not split_lib.is_eval_query("q4"):   # a train negative lives in the per-query table
        del want["q4"]
    assert end == want


def test_eval_set_hand_worked(tmp_path):
    # Everything is eval with modulus 2 for the queries chosen below (md5 checked in the test).
    queries = [q for q in (f"query{i}" for i in range(100)) if split_lib.is_eval_query(q, 2)][:2]
    qa, qb = queries
    inter = INTER_HEADER + (f"{qa}\t\tA\tpositive\t1\t2.5\n" f"{qa}\t\tA\tpositive\t2\t1.5\n"
                            f"{qa}\t\tB\tpositive\t3\t0.5\n" f"{qa}\t\tC\tnegative\t4\t\n"
                            f"{qb}\tu1\tC\tclick\t5\t\n" f"{qb}\t\tB\tnegative\t6\t\n")
    spec, _ = _prepare(tmp_path, inter=inter, split=split_lib.SplitConfig(modulus=2))
    ids = layout_lib.load_item_id_map(spec)
    ev = eval_set_lib.load_eval_set(spec, "eval")
    assert ev.queries == [qa, qb]
    assert ev.user_rows.tolist() == [-1, 0]
    rows, gains = ev.relevant(0)
    assert rows.tolist() == [ids["A"], ids["B"]] and gains.tolist() == [2.5, 0.5]  # max gain
    rows, gains = ev.relevant(1)
    assert rows.tolist() == [ids["C"]] and gains.tolist() == [1.0]                # default
    ev = eval_set_lib.load_eval_set(spec, "eval", min_gain=1.0)
    assert ev.queries == [qa, qb] and ev.relevant(0)[0].tolist() == [ids["A"]]
    ev = eval_set_lib.load_eval_set(spec, "eval", min_gain=2.0)
    assert ev.queries == [qa]                 # requests without a relevant item are left out
    pairs = eval_set_lib.load_labeled_pairs(spec, "eval")
    assert pairs["label"].tolist() == [1, 1, 1, 0, 1, 0]
    # NaN passed `gain >= min_gain` as "nothing relevant": every request gone, every metric 0.
    with pytest.raises(ValueError, match="min_gain must be a finite number, got nan"):
        eval_set_lib.load_eval_set(spec, "eval", min_gain=float("nan"))


@pytest.mark.parametrize("make,needle", [
    (lambda: prepare_lib.PrepareConfig(items="i", interactions="x", output="o",
                                       eval_min_gain=float("nan")),
     "eval_min_gain must be a finite number, got nan"),
    (lambda: prepare_lib.PrepareConfig(items="i", interactions="x", output="o",
                                       eval_min_gain=float("inf")),
     "eval_min_gain must be a finite number, got inf"),
    (lambda: BeamSettings(partition_mb=float("nan")), "beam partition_mb must be > 0, got nan"),
])
def test_settings_that_compare_false_to_every_bound_are_refused(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


@pytest.mark.parametrize("query,bucket", [
    # int(md5(query.encode('utf-8')).hexdigest(), 16) % 10, golden values; bucket 0 = eval.
    ("angle bracket", 7), ("apple", 1), ("苹果手机", 2), ("paint roller", 9),
    (".75 x 3", 0), ("1 1/4 sink drain kit", 0), ("1 in x 36", 0)])
def test_query_hash_rule_is_the_dashboard_rule(query, bucket):
    assert int(hashlib.md5(query.encode("utf-8")).hexdigest(), 16) % 10 == bucket
    assert split_lib.query_hash(query) % 10 == bucket
    assert split_lib.is_eval_query(query) == (bucket == 0)
    assert split_lib.eval_queries_mask([query])[0] == (bucket == 0)


def test_split_puts_all_rows_of_a_query_together_and_is_deterministic(tiny_catalog, tmp_path):
    outs = []
    for name in ("a", "b"):
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            items=tiny_catalog.items_path, users=tiny_catalog.users_path,
            interactions=tiny_catalog.interactions_path, output=str(tmp_path / name)),
            log=lambda *_: None)
        outs.append(str(tmp_path / name))
    spec = layout_lib.load_layout_spec(outs[0])
    queries = layout_lib.load_queries(spec)
    for split in ("train", "eval"):
        rows = set(layout_lib.read_records(spec, split)["query_row"].tolist())
        assert all(split_lib.is_eval_query(queries[q]) == (split == "eval") for q in rows)
    # Same inputs and config -> byte-identical layout files (layout.json names its own dir).
    for root, _, files in os.walk(outs[0]):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), outs[0])
            with open(os.path.join(outs[0], rel), "rb") as f1, \
                    open(os.path.join(outs[1], rel), "rb") as f2:
                a, b = f1.read(), f2.read()
            if rel == layout_lib.LAYOUT_JSON:
                a = a.replace(outs[0].encode(), b"X")
                b = b.replace(outs[1].encode(), b"X")
            assert a == b, rel


def test_time_split(tmp_path):
    spec, _ = _prepare(tmp_path, split=split_lib.SplitConfig(method="time", time_cutoff=25))
    assert spec.num_records == {"train": 2, "eval": 2}
    spec, _ = _prepare(tmp_path, split=split_lib.SplitConfig(method="time", eval_fraction=0.25))
    assert spec.num_records == {"train": 3, "eval": 1}


def test_items_are_tokenized_once_with_the_layout_config(tiny_layout):
    from dpsr_tf.tokenization import Tokenizer
    spec = layout_lib.load_layout_spec(tiny_layout)
    table = layout_lib.load_item_table(spec)
    tok = Tokenizer(spec.tokenizer_config)
    for row in (0, 17, spec.num_items - 1):
        np.testing.assert_array_equal(table.tokens(row), tok.tokenize_one(table.titles[row]))
    assert spec.token_id_space == tok.id_space


def test_vocabulary_mode_lives_in_the_layout(tmp_path):
    from dpsr_tf.tokenization import Tokenizer  # pylint: disable=import-outside-toplevel
    spec, text = _prepare(tmp_path, build_vocab=True, vocab_min_count=1)
    assert "built a vocabulary of" in text
    assert spec.tokenizer_config.vocab_file == os.path.join(spec.layout_dir, layout_lib.VOCAB_TXT)
    moved = tmp_path / "moved"
    os.rename(spec.layout_dir, moved)          # the layout is relocatable
    spec = layout_lib.load_layout_spec(str(moved))
    assert spec.tokenizer_config.vocab_file == str(moved / layout_lib.VOCAB_TXT)
    tok = Tokenizer(spec.tokenizer_config)
    table = layout_lib.load_item_table(spec)
    np.testing.assert_array_equal(table.tokens(0), tok.tokenize_one(table.titles[0]))
    assert spec.token_id_space == tok.id_space < 1 << 20   # vocabulary + OOV buckets


def test_interaction_shards_by_glob(tmp_path):
    """A glob reads its files in name order as one file; headers must agree; examples name the
    shard."""
    rows = GOOD_ROWS.splitlines(keepends=True)
    _write(tmp_path / "inter-0.tsv", INTER_HEADER + "".join(rows[:2]) + "x\tu1\tZ\tclick\t5\t\n")
    with gzip.open(tmp_path / "inter-1.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(INTER_HEADER + "".join(rows[2:]))
    cfg = prepare_lib.PrepareConfig(
        items=_write(tmp_path / "items.tsv", ITEMS), users=_write(tmp_path / "users.tsv", USERS),
        interactions=str(tmp_path / "inter-*"), output=str(tmp_path / "sharded"),
        pseudo_queries=pseudo_lib.PseudoQueryConfig(per_item=0))
    lines = []
    sharded = prepare_lib.prepare(cfg, log=lines.append)
    inter = sharded.counts["interactions"]
    assert (inter["rows_read"], inter["rows_kept"]) == (5, 4)
    assert inter["examples"]["unknown item"] == [
        f"{tmp_path}/inter-0.tsv:4: item_id 'Z' is not in the items file"]
    assert layout_lib.load_queries(sharded) == ["apple", "galaxy phone"]
    _write(tmp_path / "inter-2.tsv", "query\titem_id\tlabel\n")
    with pytest.raises(schema.SchemaError, match="differs from the first file's"):
        prepare_lib.prepare(dataclasses.replace(cfg, output=str(tmp_path / "other")))
    with pytest.raises(schema.SchemaError, match="no file matches"):
        prepare_lib.prepare(dataclasses.replace(cfg, interactions=str(tmp_path / "none-*"),
                                                output=str(tmp_path / "other")))
