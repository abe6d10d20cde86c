"""The Beam prepare (DirectRunner, 2 worker processes) writes the single-process layout: the same
examples through the input pipeline, the same tables, the same report; no row dropped."""
import dataclasses
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.data.schema import Reason

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = synthetic.SyntheticConfig(num_items=120, num_users=30, num_interactions=800, seed=11)
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]

# One bad row per reason, appended to the generated files (the items file has 9 columns:
# item_id, title and 7 categorical ones; users 4; interactions 5).
BAD_ITEMS = ["P00000000\tA second definition\t" + "\t".join(["x"] * 7),   # duplicate item
             "EMPTYTITLE\t   \t" + "\t".join(["x"] * 7),                   # empty title
             " spaced\tSome title\t" + "\t".join(["x"] * 7),               # malformed id
             "SHORT\tonly two"]                                            # field count
BAD_USERS = ["U0000000\tf\tlow\t18-24"]                                    # duplicate user
BAD_INTERACTIONS = ["drill\tU0000001\tNOSUCHITEM\tclick\t1700000001",      # unknown item
                    "drill\tU0000001\tEMPTYTITLE\tclick\t1700000002",      # item row rejected
                    "drill\tU0000001\tP00000001\tmaybe\t1700000003",       # bad label
                    "   \tU0000001\tP00000001\tclick\t1700000004",         # empty query
                    "drill\tNOSUCHUSER\tP00000001\tclick\t1700000005",     # unknown user
                    "drill\tU0000001\tP00000001\tclick\tyesterday",        # bad timestamp
                    "drill\tU0000001\tP00000001"]                          # field count
EXPECTED_REJECTED = {
    "items": {Reason.DUPLICATE_ITEM: 1, Reason.EMPTY_TITLE: 1, Reason.EMPTY_ID: 1,
              Reason.FIELD_COUNT: 1},
    "users": {Reason.DUPLICATE_USER: 1},
    "interactions": {Reason.UNKNOWN_ITEM: 2, Reason.BAD_LABEL: 1, Reason.EMPTY_QUERY: 1,
                     Reason.UNKNOWN_USER: 1, Reason.BAD_TIMESTAMP: 1, Reason.FIELD_COUNT: 1,
                     Reason.BAD_UTF8: 1},
}


def _append(path, rows):
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(r + "\n" for r in rows))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The small catalog with bad rows; interactions as two shards (one gzipped) and a glob."""
    out = tmp_path_factory.mktemp("beam_catalog")
    cat = synthetic.generate(SMALL, str(out), log=lambda *_: None)
    _append(cat.items_path, BAD_ITEMS)
    _append(cat.users_path, BAD_USERS)
    with open(cat.interactions_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header, rows = lines[0], lines[1:] + BAD_INTERACTIONS
    half = len(rows) // 2
    with open(out / "inter-00000.tsv", "wb") as f:
        f.write("\n".join([header] + rows[:half]).encode() + b"\n")
        f.write(b"dr\xffill\tU0000001\tP00000001\tclick\t1700000006\n")     # bad UTF-8
    with gzip.open(out / "inter-00001.tsv.gz", "wb") as f:
        f.write("\n".join([header] + rows[half:]).encode() + b"\n")
    return cat.items_path, cat.users_path, str(out / "inter-*.tsv*"), len(rows) + 1


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "prepare", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def layouts(inputs, tmp_path_factory):
    """(single-process layout, Beam layout): the Beam one written by the CLI."""
    items, users, interactions, _ = inputs
    out = tmp_path_factory.mktemp("beam_layouts")
    config = prepare_lib.PrepareConfig(items=items, users=users, interactions=interactions,
                                       output=str(out / "single"), history_length=3,
                                       records_per_shard=500, max_reject_fraction=0.5)
    single = prepare_lib.prepare(config, log=lambda *_: None)
    beam = _cli(f"--items={items}", f"--users={users}", f"--interactions={interactions}",
                f"--output={out / 'beam'}", "--history_length=3", "--records_per_shard=500",
                "--max_reject_fraction=0.5", "--runner=DirectRunner",
                # Several hash partitions and position ranges, so rows cross partitions.
                "--beam_partitions=3", "--beam_range_lines=97",
                *[f"--beam_option={o}" for o in MULTI_PROCESS])
    assert beam.returncode == 0, beam.stderr[-3000:]
    assert "beam: pipeline done" in beam.stdout
    assert f"rows read: items {SMALL.num_items + len(BAD_ITEMS)}," in beam.stdout
    return single, layout_lib.load_layout_spec(str(out / "beam"))


def _examples(spec, split):
    """Every example of a split through the input pipeline, as hashable tuples."""
    from dpsr_tf.data import pipeline  # pylint: disable=import-outside-toplevel
    ds = pipeline.make_eval_input_fn(spec.layout_dir, batch_size=128, num_random_negatives=0,
                                     split=split)()
    out = []
    for batch in ds:
        keys = sorted(k for k in batch if not k.startswith("neg_item"))   # per batch, not example
        columns = [batch[k].to_list() if hasattr(batch[k], "to_list") else batch[k].numpy().tolist()
                   for k in keys]
        for values in zip(*columns):
            out.append(tuple((k, tuple(v) if isinstance(v, list) else v)
                             for k, v in zip(keys, values)))
    return out


@pytest.mark.parametrize("split", ["train", "eval", "pseudo", "validation"])
def test_same_examples_through_the_input_pipeline(layouts, split):
    single, beam = layouts
    a, b = _examples(single, split), _examples(beam, split)
    assert len(a) == single.num_records[split] > 0
    assert sorted(a) == sorted(b)
    if split == "eval":            # eval keeps file order in both paths
        assert a == b


def test_same_tables_by_external_id(layouts):
    single, beam = layouts
    assert layout_lib.load_item_ids(single) == layout_lib.load_item_ids(beam)
    assert layout_lib.load_queries(single) == layout_lib.load_queries(beam)
    for load in (layout_lib.load_item_table, layout_lib.load_user_table):
        ta, tb = load(single), load(beam)
        assert ta.ids == tb.ids and ta.vocabularies == tb.vocabularies
        np.testing.assert_array_equal(ta.features, tb.features)
    for load in (layout_lib.load_user_histories, layout_lib.load_query_tokens):
        for x, y in zip(load(single), load(beam)):
            np.testing.assert_array_equal(x, y)
    for rel in (layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS, layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS):
        np.testing.assert_array_equal(np.load(single.path(rel)), np.load(beam.path(rel)))
    assert single.num_records == beam.num_records


def test_same_report_and_every_row_accounted_for(inputs, layouts):
    single, beam = layouts
    with open(single.path(layout_lib.REPORT_TXT), encoding="utf-8") as f:
        report = f.read()
    with open(beam.path(layout_lib.REPORT_TXT), encoding="utf-8") as f:
        assert f.read() == report
    assert beam.counts == single.counts
    _, _, _, interaction_rows = inputs
    expected_rows = {"items": SMALL.num_items + len(BAD_ITEMS),
                     "users": SMALL.num_users + len(BAD_USERS),
                     "interactions": interaction_rows}
    for kind, rejected in EXPECTED_REJECTED.items():
        counts = beam.counts[kind]
        assert counts["rejected"] == {r.value: n for r, n in rejected.items()}
        assert counts["rows_read"] == expected_rows[kind]
        assert counts["rows_kept"] + counts["rows_rejected"] == counts["rows_read"]
    inter = beam.counts["interactions"]
    assert sum(beam.counts["labels"].values()) == inter["rows_kept"]
    # The validation split's human negatives stay in the per-query table too: count its
    # positives.
    validation = layout_lib.read_records(beam, "validation")
    assert (beam.num_records["train"] + beam.num_records["eval"]
            + int((validation["label_kind"] != 2).sum())
            + beam.counts["train_human_negatives"]["pairs"]) == inter["rows_kept"]
    # The cascade names the rejected item row, and the shard file of each example.
    examples = inter["examples"][Reason.UNKNOWN_ITEM.value]
    assert any("EMPTYTITLE" in e and "(its row was rejected:" in e for e in examples)
    assert any(e.startswith(os.path.dirname(inputs[2]) + "/inter-0000") for e in examples)


def test_cli_refuses_what_beam_cannot_do(inputs, tmp_path):
    items, users, interactions, _ = inputs
    args = [f"--items={items}", f"--users={users}", f"--interactions={interactions}"]
    bad = _cli(*args, f"--output={tmp_path / 'a'}", "--beam_option=--direct_num_workers=2")
    assert bad.returncode == 1 and "needs a Beam --runner" in bad.stderr
    vocab = _cli(*args, f"--output={tmp_path / 'b'}", "--runner=DirectRunner", "--build_vocab")
    assert vocab.returncode == 1 and "--build_vocab is not supported" in vocab.stderr
    assert not os.path.exists(tmp_path / "b")


def test_users_from_interactions_and_time_split(tmp_path):
    """No users file: a user's row follows the first row that reaches the user check (even if a
    later check rejects it), in both paths; --split=time with a cutoff; no pseudo-queries."""
    from dpsr_tf.data import pseudo_queries as pseudo_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data.beam import prepare_beam  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import split as split_lib  # pylint: disable=import-outside-toplevel
    (tmp_path / "items.tsv").write_text("item_id\ttitle\tbrand\nA\tApple iPhone\tapple\n"
                                        "B\tFresh apples\t\nC\tGalaxy S24\tsamsung\n")
    (tmp_path / "inter.tsv").write_text(
        "query\tuser_id\titem_id\tlabel\ttimestamp\n"
        "apple\tu9\tZ\tclick\t1\n"             # unknown item: does not define u9
        "apple\tu3\tA\tclick\tnever\n"         # bad timestamp, but u3 is defined here (row 0)
        "apple\tu1\tA\tclick\t10\n"
        "phone\tu9\tC\tclick\t20\n"            # u9 defined here (row 2)
        "apple\tu1\tB\tpositive\t30\n"
        "phone\tu3\tC\tnegative\t40\n"
        "phone\t\tA\tclick\t50\n"
        "galaxy\tu1\tC\tclick\t60\n")
    config = prepare_lib.PrepareConfig(
        items=str(tmp_path / "items.tsv"), interactions=str(tmp_path / "inter.tsv"),
        output=str(tmp_path / "single"), max_reject_fraction=1.0,
        pseudo_queries=pseudo_lib.PseudoQueryConfig(per_item=0),
        split=split_lib.SplitConfig(method=split_lib.TIME, time_cutoff=45.0))
    single = prepare_lib.prepare(config, log=lambda *_: None)
    from dpsr_tf.data.beam import BeamSettings  # pylint: disable=import-outside-toplevel
    beam = prepare_beam(dataclasses.replace(config, output=str(tmp_path / "beam")),
                        "DirectRunner", log=lambda *_: None,
                        settings=BeamSettings(partitions=2, range_lines=2))
    assert layout_lib.load_user_table(single).ids == ["u3", "u1", "u9"]
    assert layout_lib.load_user_table(beam).ids == ["u3", "u1", "u9"]
    assert beam.counts == single.counts and beam.num_records == single.num_records
    for split in ("train", "eval"):
        a, b = layout_lib.read_records(single, split), layout_lib.read_records(beam, split)
        assert sorted(a.tolist()) == sorted(b.tolist())
    for load in (layout_lib.load_user_histories, layout_lib.load_query_tokens):
        for x, y in zip(load(single), load(beam)):
            np.testing.assert_array_equal(x, y)
