"""The tf.data input pipeline: in-graph joins equal a numpy reference join, the eval split
matches the raw files, random negatives are shared per batch and uniform, tables are read
once, and the features survive tf.estimator.Estimator.train in TF 2.15."""
import csv
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import hard_negative_table
from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pipeline
from dpsr_tf.data import split as split_lib
from dpsr_tf.tokenization import Tokenizer


def _np(value):
    if isinstance(value, tf.RaggedTensor):
        return value.to_list()
    return value.numpy()


def _batches(dataset):
    return [{k: _np(v) for k, v in batch.items()} for batch in dataset]


def _concat(batches, key):
    out = []
    for b in batches:
        out.extend(list(b[key]))
    return out


class _Reference:
    """The join done by hand in numpy from the layout's files."""

    def __init__(self, spec):
        self.spec = spec
        self.items = layout_lib.load_item_table(spec)
        self.users = layout_lib.load_user_table(spec)
        self.queries = layout_lib.load_queries(spec)
        self.q_ids, self.q_splits = layout_lib.load_query_tokens(spec)
        self.h_items, self.h_splits = layout_lib.load_user_histories(spec)

    def query_tokens(self, q):
        return self.q_ids[self.q_splits[q]:self.q_splits[q + 1]].tolist()

    def history(self, u, end):
        if u < 0:
            return []
        lo = self.h_splits[u]
        return self.h_items[lo + max(0, end - self.spec.history_length):lo + end].tolist()

    def user_feature(self, u, j):
        return 0 if u < 0 else int(self.users.features[u, j])

    def check_item(self, batch, prefix, i, row):
        assert batch[f"{prefix}_row"][i] == row
        assert batch[f"{prefix}_tokens"][i] == self.items.tokens(row).tolist()
        for j, name in enumerate(self.spec.item_features):
            assert batch[f"{prefix}_{name}"][i] == self.items.features[row, j]


def test_train_join_equals_numpy_reference(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    ref = _Reference(spec)
    fn = pipeline.make_train_input_fn(tiny_layout, batch_size=32, num_random_negatives=8,
                                      shuffle_buffer=0, seed=3, num_epochs=1)
    batches = _batches(fn())
    records = layout_lib.read_records(spec, "train")
    assert sum(len(b["item_row"]) for b in batches) == len(records) // 32 * 32
    assert set(batches[0]) == set(pipeline.feature_keys(tiny_layout)["train"])
    k = 0
    for batch in batches:
        for i in range(len(batch["item_row"])):
            r = records[k]
            k += 1
            q, u = int(r["query_row"]), int(r["user_row"])
            assert batch["query"][i].decode() == ref.queries[q]
            assert batch["query_row"][i] == q
            assert batch["query_tokens"][i] == ref.query_tokens(q)
            assert batch["user_row"][i] == u
            for j, name in enumerate(spec.user_features):
                assert batch[f"user_{name}"][i] == ref.user_feature(u, j)
            assert batch["user_history"][i] == ref.history(u, int(r["history_end"]))
            ref.check_item(batch, "item", i, int(r["item_row"]))
            assert batch["label"][i] == (0.0 if r["label_kind"] == 2 else 1.0)
            assert batch["gain"][i] == r["gain"]
        for i, row in enumerate(batch["neg_item_row"]):
            ref.check_item(batch, "neg_item", i, int(row))
    # The history truncation (history_length 3) and anonymous rows were exercised.
    lengths = [len(h) for h in _concat(batches, "user_history")]
    assert max(lengths) == 3 and min(lengths) == 0
    assert -1 in _concat(batches, "user_row")


def _raw_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_eval_batches_match_the_raw_files(tiny_catalog, tiny_layout):
    """Independent of the layout's numpy tables: strings from the TSVs, tokens from the
    pybind11 tokenizer."""
    spec = layout_lib.load_layout_spec(tiny_layout)
    items = {r["item_id"]: r for r in _raw_rows(tiny_catalog.items_path)}
    users = {r["user_id"]: r for r in _raw_rows(tiny_catalog.users_path)}
    rows = [r for r in _raw_rows(tiny_catalog.interactions_path)
            if split_lib.is_eval_query(r["query"])]
    fn = pipeline.make_eval_input_fn(tiny_layout, batch_size=50, num_random_negatives=4)
    batches = _batches(fn())
    assert sum(len(b["query"]) for b in batches) == len(rows) == spec.num_records["eval"]
    assert len(batches[-1]["query"]) == len(rows) % 50 or len(rows) % 50 == 0
    ids = layout_lib.load_item_ids(spec)
    table = layout_lib.load_item_table(spec)
    user_vocab = layout_lib.load_user_table(spec).vocabularies
    tok = Tokenizer(spec.tokenizer_config)
    got = {k: _concat(batches, k) for k in batches[0]}
    for i, raw in enumerate(rows):
        assert got["query"][i].decode() == raw["query"]
        assert got["query_tokens"][i] == tok.tokenize_one(raw["query"]).tolist()
        item = items[raw["item_id"]]
        assert ids[got["item_row"][i]] == raw["item_id"]
        assert got["item_tokens"][i] == tok.tokenize_one(item["title"]).tolist()
        for name in spec.item_features:
            assert table.vocabularies[name][got[f"item_{name}"][i]] == item[name]
        assert got["label"][i] == (0.0 if raw["label"] == "negative" else 1.0)
        if raw["user_id"]:
            for name in spec.user_features:
                assert user_vocab[name][got[f"user_{name}"][i]] == users[raw["user_id"]][name]
        else:
            assert got["user_row"][i] == -1 and got["user_history"][i] == []


def _chi2_critical(df, z=3.090):
    """Wilson-Hilferty approximation of the chi-square quantile; z=3.090 <=> p = 0.001."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_random_negatives_are_shared_per_batch_uniform_and_seeded(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    num_batches, r = 300, 64
    fn = pipeline.make_train_input_fn(tiny_layout, batch_size=16, num_random_negatives=r,
                                      seed=11)
    ds = fn().take(num_batches)
    draws = []
    for batch in ds:
        neg = batch["neg_item_row"]
        assert neg.shape == (r,)                     # one set per batch, shared by all examples
        assert batch["neg_item_tokens"].nrows() == r
        draws.append(neg.numpy())
    draws = np.stack(draws)
    assert draws.min() >= 0 and draws.max() < spec.num_items
    # Different batches draw different negatives.
    assert len({tuple(d) for d in draws}) == num_batches
    # Uniform over the item table: chi-square goodness of fit, seeded, at p = 0.001.
    counts = np.bincount(draws.ravel(), minlength=spec.num_items)
    expected = draws.size / spec.num_items
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(spec.num_items - 1), chi2
    # Same seed -> same negatives (and same batches); another seed -> other negatives.
    again = np.stack([b["neg_item_row"].numpy() for b in fn().take(3)])
    np.testing.assert_array_equal(again, draws[:3])
    other = pipeline.make_train_input_fn(tiny_layout, batch_size=16, num_random_negatives=r,
                                         seed=12)
    assert not np.array_equal(next(iter(other()))["neg_item_row"].numpy(), draws[0])


def test_train_batches_have_static_batch_size_and_shards_partition(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    fn = pipeline.make_train_input_fn(tiny_layout, batch_size=8, num_random_negatives=2,
                                      seed=0)
    assert fn().element_spec["item_row"].shape == (8,)
    records = layout_lib.read_records(spec, "train")["item_row"]
    for shard in range(3):
        fn = pipeline.make_train_input_fn(tiny_layout, batch_size=50, num_random_negatives=0,
                                          shuffle_buffer=0, num_epochs=1, num_shards=3,
                                          shard_index=shard)
        mine = records[shard::3]
        assert _concat(_batches(fn()), "item_row") == mine[:len(mine) // 50 * 50].tolist()


def test_tables_are_read_once(tiny_layout, tmp_path):
    """After the first batches the table files can disappear: nothing reads them again."""
    copy = str(tmp_path / "layout")
    shutil.copytree(tiny_layout, copy)
    fn = pipeline.make_train_input_fn(copy, batch_size=4, num_random_negatives=4, seed=1)
    it = iter(fn())
    for _ in range(3):
        next(it)
    for rel in (layout_lib.ITEM_TOKEN_IDS, layout_lib.ITEM_FEATURES, layout_lib.QUERY_TEXTS,
                layout_lib.USER_FEATURES, layout_lib.USER_HISTORY_ITEMS):
        os.remove(os.path.join(copy, rel))
    for _ in range(20):
        batch = next(it)
    assert batch["item_tokens"].nrows() == 4


def test_item_input_fn_yields_every_item_once_in_order(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    ref = _Reference(spec)
    batches = _batches(pipeline.make_item_input_fn(tiny_layout, batch_size=64)())
    assert set(batches[0]) == set(pipeline.feature_keys(tiny_layout)["item"])
    rows = _concat(batches, "item_row")
    assert rows == list(range(spec.num_items))
    assert [x.decode() for x in _concat(batches, "item_id")] == ref.items.ids
    for b in batches:
        for i, row in enumerate(b["item_row"]):
            ref.check_item(b, "item", i, int(row))


def test_request_input_fn_follows_the_eval_set(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    ref = _Reference(spec)
    ev = eval_set_lib.load_eval_set(spec)
    assert len(ev) > 0
    batches = _batches(pipeline.make_request_input_fn(tiny_layout, ev, batch_size=16)())
    assert _concat(batches, "request_index") == list(range(len(ev)))
    assert [q.decode() for q in _concat(batches, "query")] == ev.queries
    hist = _concat(batches, "user_history")
    for i in range(len(ev)):
        assert hist[i] == ref.history(int(ev.user_rows[i]), int(ev.history_ends[i]))


def test_ragged_features_survive_estimator_train_and_evaluate(tiny_layout, tmp_path):
    spec = layout_lib.load_layout_spec(tiny_layout)
    seen = {}

    def model_fn(features, labels, mode, params):
        del params
        assert labels is None
        for key in ("query_tokens", "item_tokens", "neg_item_tokens", "user_history"):
            seen[key] = type(features[key])
        emb = tf.compat.v1.get_variable("emb", [spec.token_id_space, 4])

        def bag(ragged):
            vectors = tf.nn.embedding_lookup(emb, ragged.flat_values)
            return tf.math.unsorted_segment_sum(vectors, ragged.value_rowids(), ragged.nrows())

        # The tables are not embedded in the GraphDef (2 GB limit at ~1M items): no constant
        # is anywhere near the item token table's size.
        table_bytes = os.path.getsize(os.path.join(tiny_layout, layout_lib.ITEM_TOKEN_IDS))
        graph = tf.compat.v1.get_default_graph().as_graph_def()
        biggest = max(len(n.attr["value"].tensor.SerializeToString()) for n in graph.node
                      if n.op == "Const")
        seen["biggest_const"] = biggest
        assert biggest < table_bytes / 10, (biggest, table_bytes)
        q, i, n = (bag(features[k]) for k in ("query_tokens", "item_tokens", "neg_item_tokens"))
        loss = (tf.reduce_mean(tf.reduce_sum(q * i, 1) * features["label"])
                + tf.reduce_mean(tf.matmul(q, n, transpose_b=True))
                + 0.0 * tf.cast(tf.reduce_sum(features["user_history"].flat_values), tf.float32))
        step = tf.compat.v1.train.get_global_step()
        train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    est = tf.estimator.Estimator(model_fn, model_dir=str(tmp_path / "model"))
    est.train(pipeline.make_train_input_fn(tiny_layout, batch_size=16, num_random_negatives=8,
                                           seed=0), steps=3)
    assert est.get_variable_value("global_step") == 3
    assert all(seen[k] is tf.RaggedTensor for k in ("query_tokens", "item_tokens",
                                                    "neg_item_tokens", "user_history")), seen
    metrics = est.evaluate(pipeline.make_eval_input_fn(tiny_layout, batch_size=64,
                                                       num_random_negatives=8))
    assert np.isfinite(metrics["loss"])


def test_bad_arguments_are_value_errors(tiny_layout):
    with pytest.raises(ValueError, match="unknown split 'test'"):
        pipeline.make_train_input_fn(tiny_layout, split="test")()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        pipeline.make_train_input_fn(tiny_layout, batch_size=0)()
    with pytest.raises(FileNotFoundError, match="is not a training layout"):
        pipeline.make_train_input_fn(os.path.dirname(tiny_layout))


def test_layout_without_users(tmp_path):
    from dpsr_tf.data import prepare as prepare_lib  # pylint: disable=import-outside-toplevel
    (tmp_path / "items.tsv").write_text("item_id\ttitle\nA\tred apple\nB\tblue phone\n",
                                       encoding="utf-8")
    (tmp_path / "inter.tsv").write_text(
        "query\titem_id\tlabel\n" + "".join(f"q{i}\t{'AB'[i % 2]}\tclick\n" for i in range(40)),
        encoding="utf-8")
    prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=str(tmp_path / "items.tsv"), interactions=str(tmp_path / "inter.tsv"),
        output=str(tmp_path / "layout")), log=lambda *_: None)
    layout_dir = str(tmp_path / "layout")
    batch = next(iter(pipeline.make_train_input_fn(layout_dir, batch_size=4,
                                                   num_random_negatives=3, seed=0)()))
    assert not any(k.startswith("user_") and k not in ("user_row", "user_history")
                   for k in batch)
    assert batch["user_row"].numpy().tolist() == [-1] * 4
    assert batch["user_history"].to_list() == [[]] * 4
    ev = eval_set_lib.load_eval_set(layout_dir)
    assert len(ev) == 4                       # q10, q14, q33 and q38 hash to bucket 0
    req = next(iter(pipeline.make_request_input_fn(layout_dir, ev)()))
    assert req["user_history"].to_list() == [[]] * len(ev)


def test_human_negatives_are_joined_per_query(tiny_catalog, tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    ref = _Reference(spec)
    items = np.load(spec.path(layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS))
    splits = np.load(spec.path(layout_lib.QUERY_HUMAN_NEGATIVE_SPLITS))
    # The table holds exactly the train split's distinct (query, item) negatives of the raw
    # interactions (recomputed from the input files by query text and item id)...
    queries = ref.queries
    ids = layout_lib.load_item_ids(spec)
    table = {(queries[q], ids[i]) for q in range(len(splits) - 1)
             for i in items[splits[q]:splits[q + 1]]}
    raw = {(r["query"], r["item_id"]) for r in _raw_rows(tiny_catalog.interactions_path)
           if r["label"] == "negative" and not split_lib.is_eval_query(r["query"])}
    assert table == raw and len(raw) == spec.counts["train_human_negatives"]["pairs"] > 0
    # ...and the train stream no longer spends batch slots on them.
    assert (layout_lib.read_records(spec, "train")["label_kind"] != 2).all()
    cap = 1
    fn = pipeline.make_train_input_fn(tiny_layout, batch_size=64, num_random_negatives=1,
                                      seed=4, human_negatives=cap,
                                      pseudo_mix=pipeline.PseudoQueryMix(0.0))
    picked = {}          # query row -> how often each of its negatives was joined
    for step, batch in enumerate(fn()):
        if step == 60:
            break
        assert set(batch) == set(pipeline.feature_keys(tiny_layout)["train_with_human_negatives"])
        rows = batch["human_negative_rows"].to_list()
        flat = batch["human_negative_item_row"].numpy().tolist()
        assert sum(rows, []) == flat
        tokens = batch["human_negative_item_tokens"].to_list()
        for k, row in enumerate(flat):
            assert tokens[k] == ref.items.tokens(row).tolist()
        for q, got in zip(batch["query_row"].numpy(), rows):
            negatives = items[splits[q]:splits[q + 1]].tolist()
            assert len(got) == min(cap, len(negatives))
            assert set(got) <= set(negatives)
            for row in got:
                picked.setdefault(int(q), []).append(negatives.index(row))
    # A query with several negatives gets each of them (uniform offset, not a biased window).
    many = [q for q in picked if splits[q + 1] - splits[q] > 1 and len(picked[q]) >= 20]
    assert many
    for q in many:
        assert len(set(picked[q])) == splits[q + 1] - splits[q], (q, picked[q])


def _hand_table(spec):
    """A hard-negative table made by hand: query q holds q % 4 items (q * 7 + 3 j) % N."""
    n = spec.num_items
    lists = [[(q * 7 + 3 * j) % n for j in range(q % 4)] for q in range(spec.num_queries)]
    splits = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    items = np.array(sum(lists, []), np.int32)
    return lists, items, splits


def test_hard_negatives_are_joined_per_query(tiny_layout, tmp_path):
    spec = layout_lib.load_layout_spec(tiny_layout)
    ref = _Reference(spec)
    lists, items, splits = _hand_table(spec)
    model_dir = str(tmp_path / "model")
    hard_negative_table.write_table(model_dir, items, splits, {"made": "by hand"})
    cap = 2

    def stream(seed):
        return pipeline.make_train_input_fn(
            tiny_layout, batch_size=64, num_random_negatives=1, seed=seed, hard_negatives=cap,
            hard_negative_dir=model_dir, pseudo_mix=pipeline.PseudoQueryMix(0.0))()

    picked = {}          # query row -> the positions of its joined negatives
    for step, batch in enumerate(stream(4)):
        if step == 40:
            break
        assert "hard_negative_rows" in batch and "human_negative_rows" not in batch
        rows = batch["hard_negative_rows"].to_list()
        flat = batch["hard_negative_item_row"].numpy().tolist()
        assert sum(rows, []) == flat
        tokens = batch["hard_negative_item_tokens"].to_list()
        for k, row in enumerate(flat):
            assert tokens[k] == ref.items.tokens(row).tolist()
            for j, name in enumerate(spec.item_features):
                assert batch[f"hard_negative_item_{name}"][k] == ref.items.features[row, j]
        for q, got in zip(batch["query_row"].numpy(), rows):
            negatives = lists[q]
            assert len(got) == min(cap, len(negatives))
            assert set(got) <= set(negatives)
            if len(got) == 2 and len(negatives) == 3:   # cyclically consecutive, no repeat
                assert got[0] != got[1]
            for row in got:
                picked.setdefault(int(q), set()).add(negatives.index(row))
    # Queries with 3 negatives and 2 slots see all 3 over the batches (a seeded random offset).
    assert any(len(lists[q]) == 3 and picked[q] == {0, 1, 2} for q in picked)
    # Seeded: the same seed gives the same negatives.
    a, b = next(iter(stream(9))), next(iter(stream(9)))
    assert a["hard_negative_rows"].to_list() == b["hard_negative_rows"].to_list()


def test_hard_negatives_without_a_table_fail_early(tiny_layout, tmp_path):
    with pytest.raises(ValueError, match=r"no mined hard-negative table \(train with "
                                         r"--hard_negatives_from=MODEL_DIR"):
        pipeline.make_train_input_fn(tiny_layout, batch_size=8, hard_negatives=2,
                                     hard_negative_dir=str(tmp_path),
                                     pseudo_mix=pipeline.PseudoQueryMix(0.0))()
    spec = layout_lib.load_layout_spec(tiny_layout)
    hard_negative_table.write_table(str(tmp_path), np.zeros([0], np.int32),
                                    np.zeros([spec.num_queries], np.int64), {})
    with pytest.raises(ValueError, match=r"a table of .* queries, the layout has"):
        pipeline.make_train_input_fn(tiny_layout, batch_size=8, hard_negatives=2,
                                     hard_negative_dir=str(tmp_path),
                                     pseudo_mix=pipeline.PseudoQueryMix(0.0))()
    with pytest.raises(ValueError, match=r"hard-negative splits must run from 0 to 1"):
        hard_negative_table.write_table(str(tmp_path), np.zeros([1], np.int32),
                                        np.zeros([3], np.int64), {})
