"""The validation split carved from the training queries at prepare time: disjoint by query from
the eval split and from training, every interaction of a chosen query moved, deterministic per
seed, sized as configured; the split early stopping and the automatic choices read, with a
warning where a layout has none."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ("query_row", "item_row", "user_row", "history_end", "label_kind", "gain")


def _prepare(catalog, out, **kwargs):
    lines = []
    spec = prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=catalog.items_path, users=catalog.users_path,
        interactions=catalog.interactions_path, output=str(out), records_per_shard=1000,
        **kwargs), log=lines.append)
    return spec, "\n".join(lines)


def _queries(spec, split):
    texts = layout_lib.load_queries(spec)
    return {texts[r] for r in layout_lib.read_records(spec, split)["query_row"]}


def _rows(records):
    return sorted(tuple(r[f].item() for f in FIELDS) for r in records)


@pytest.fixture(scope="module")
def layouts(tiny_catalog, tmp_path_factory):
    """(the default layout, the same prepare with validation_fraction=0)."""
    out = tmp_path_factory.mktemp("validation")
    return (_prepare(tiny_catalog, out / "default")[0],
            _prepare(tiny_catalog, out / "none", validation_fraction=0.0)[0])


def test_validation_queries_are_training_queries_apart_from_eval_and_train(layouts):
    spec, without = layouts
    validation, train, evals = (_queries(spec, s) for s in ("validation", "train", "eval"))
    assert validation and not validation & evals and not validation & train
    assert not any(split_lib.is_eval_query(q) for q in validation)
    # The training queries of the layout without a carve, split in two; eval untouched.
    assert validation | train == _queries(without, "train")
    assert _rows(layout_lib.read_records(spec, "eval")) == _rows(
        layout_lib.read_records(without, "eval"))
    # Every interaction of a moved query is moved: its positives ...
    val = layout_lib.read_records(spec, "validation")
    positives = val[val["label_kind"] != 2]
    assert _rows(np.concatenate([layout_lib.read_records(spec, "train"), positives])) == _rows(
        layout_lib.read_records(without, "train"))
    # ... and its human negatives, from the per-query table of the layout without a carve.
    items, splits = (np.load(without.path(p)) for p in (layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS,
                                                        layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS))
    rows = np.unique(val["query_row"])
    want = sorted((int(q), int(i)) for q in rows for i in items[splits[q]:splits[q + 1]])
    negatives = val[val["label_kind"] == 2]
    assert sorted(zip(negatives["query_row"].tolist(), negatives["item_row"].tolist())) == want
    assert want     # the catalog has negatives among the moved queries: the check can fail
    # Sized as configured: ceil(0.1 * training queries), which is above the minimum of 20.
    n = len(_queries(without, "train"))
    assert n > 200 and len(validation) == math.ceil(0.1 * n)
    assert spec.split["validation"]["queries"] == len(validation)
    assert spec.counts["splits"]["validation"]["queries"] == len(validation)
    assert spec.num_records["validation"] == len(val)
    layout_lib.verify_record_files(spec)
    assert "validation" not in without.record_files and "validation" not in without.split


def test_validation_is_deterministic_per_seed(tiny_catalog, layouts, tmp_path):
    spec, _ = layouts
    again, _ = _prepare(tiny_catalog, tmp_path / "again")
    other, _ = _prepare(tiny_catalog, tmp_path / "other", seed=1)
    assert _queries(again, "validation") == _queries(spec, "validation")
    assert _queries(other, "validation") != _queries(spec, "validation")
    assert len(_queries(other, "validation")) == len(_queries(spec, "validation"))


def test_validation_queries_ignore_row_order_and_repeats():
    texts = [f"q{i}" for i in range(200)]
    rows = np.repeat(np.arange(200), 2)
    got = split_lib.validation_queries(texts, rows, 0.1, seed=4)
    shuffled = split_lib.validation_queries(texts, np.random.default_rng(0).permutation(rows),
                                            0.1, seed=4)
    assert got.tolist() == shuffled.tolist() and len(set(got.tolist())) == 20


@pytest.mark.parametrize("n, fraction, minimum, want", [
    (1141, 0.1, 20, 115),   # ceil(114.1)
    (100, 0.1, 20, 20),     # 10 raised to the minimum (within a quarter: 25)
    (40, 0.1, 20, 10),      # raised to a quarter of 40, not to 20
    (8, 0.1, 20, 2),
    (4, 0.1, 20, 1),
    (3, 0.1, 20, 0),        # too few training queries: no validation split
    (10, 0.5, 20, 5),       # a larger fraction is kept
    (5, 0.9, 20, 4),        # at least one query stays in training
    (100, 0.0, 20, 0),
    (100, 0.1, 0, 10),
])
def test_validation_size_hand_worked(n, fraction, minimum, want):
    assert split_lib.validation_size(n, fraction, minimum) == want


@pytest.mark.parametrize("kwargs", [dict(validation_fraction=1.0),
                                    dict(validation_fraction=-0.1),
                                    dict(min_validation_queries=-1)])
def test_bad_validation_settings_are_errors(kwargs):
    with pytest.raises(ValueError, match="validation"):
        prepare_lib.PrepareConfig(items="i", interactions="x", output="o", **kwargs)


def _small_log(tmp_path, num_queries):
    items = tmp_path / "items.tsv"
    items.write_text("item_id\ttitle\n" + "".join(f"i{r}\tproduct {r}\n" for r in range(10)))
    inter = tmp_path / f"inter{num_queries}.tsv"
    # Only queries that the dashboard rule keeps in training.
    queries = [q for q in (f"query {k}" for k in range(10 * num_queries))
               if not split_lib.is_eval_query(q)][:num_queries]
    inter.write_text("query\titem_id\tlabel\n" + "".join(
        f"{q}\ti{k % 10}\tclick\n" for k, q in enumerate(queries)))
    return prepare_lib.PrepareConfig(items=str(items), interactions=str(inter),
                                     output=str(tmp_path / f"layout{num_queries}"))


def test_small_logs_warn_and_fall_back(tmp_path):
    lines = []
    spec = prepare_lib.prepare(_small_log(tmp_path, 30), log=lines.append)
    assert len(_queries(spec, "validation")) == 7          # a quarter of 30, below 20
    assert any("only 7 queries" in line and "noisy" in line for line in lines)
    lines.clear()
    spec = prepare_lib.prepare(_small_log(tmp_path, 3), log=lines.append)
    assert "validation" not in spec.record_files
    assert any("no validation split (3 training queries" in line for line in lines)
    warned = []
    assert eval_set_lib.choice_split(spec, warned.append) == "eval"
    assert "has no 'validation' split" in warned[0] and "re-run `dpsr prepare`" in warned[0]


def test_choice_split_and_watched_split(layouts):
    spec, without = layouts
    warned = []
    assert eval_set_lib.choice_split(spec, warned.append) == "validation"
    assert eval_set_lib.watched_split("validation", spec, warned.append) == "validation"
    assert not warned
    assert eval_set_lib.watched_split("eval", spec, warned.append) == "eval"
    assert "optimistic" in warned.pop()
    assert eval_set_lib.watched_split("validation", without, warned.append) == "eval"
    assert "optimistic" in warned.pop()
    with pytest.raises(ValueError, match="'nope'.*has the splits"):
        eval_set_lib.watched_split("nope", spec, warned.append)
    # The validation split's requests: its queries, never an eval query.
    requests = eval_set_lib.load_eval_set(spec, "validation")
    assert len(requests) and set(requests.queries) <= _queries(spec, "validation")


def test_cli_flags(tiny_catalog, layouts, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    base = [sys.executable, "-m", "dpsr_tf.cli", "prepare", f"--items={tiny_catalog.items_path}",
            f"--interactions={tiny_catalog.interactions_path}"]
    proc = subprocess.run(base + [f"--output={tmp_path / 'l'}", "--validation_fraction=0.2"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = len(_queries(layouts[1], "train"))
    spec = layout_lib.load_layout_spec(str(tmp_path / "l"))
    assert len(_queries(spec, "validation")) == math.ceil(0.2 * n)
    assert spec.prepare_config["validation_fraction"] == 0.2
    proc = subprocess.run(base + [f"--output={tmp_path / 'bad'}", "--validation_fraction=1.5"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    assert "--validation_fraction" in proc.stderr and "must be in [0, 1)" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_built_vocabulary_never_counts_validation_queries(tiny_catalog, layouts, tmp_path):
    """--build_vocab counts the titles and the training queries the carve leaves: every count
    of the layout's vocabulary equals count_features over those texts, and features only the
    validation queries have are absent."""
    from dpsr_tf.tokenization import vocab as vocab_lib  # pylint: disable=import-outside-toplevel
    spec, _ = _prepare(tiny_catalog, tmp_path / "vocab", build_vocab=True, vocab_min_count=1)
    default, _ = layouts
    validation = _queries(default, "validation")
    assert validation == _queries(spec, "validation")   # the same carve with a vocabulary
    logged = layout_lib.load_queries(spec)[:spec.num_logged_queries]
    kept = sorted(q for q in logged if not split_lib.is_eval_query(q) and q not in validation)
    titles = layout_lib.load_item_table(spec).titles
    want = vocab_lib.count_features(list(titles) + kept, spec.tokenizer_config)
    with open(spec.tokenizer_config.vocab_file, encoding="utf-8") as f:
        got = {k: int(c) for k, c in (line.rstrip("\n").split("\t")
                                       for line in f if not line.startswith("#"))}
    assert got == dict(want)
    only_validation = set(vocab_lib.count_features(sorted(validation), spec.tokenizer_config)) - \
        set(want)
    assert only_validation   # the catalog has such features: the check can fail
    assert not only_validation & set(got)
