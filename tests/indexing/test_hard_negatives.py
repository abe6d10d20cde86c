"""Hard-negative mining (dpsr_tf/indexing/hard_negatives.py) against a NumPy brute-force
ranking (np.lexsort by score, then item row), on hand-made scores and on a tiny trained model."""
import json
import os
import shutil

import numpy as np
import pytest

from dpsr_tf.data import hard_negative_table
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing import hard_negatives as hn
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.model_dir import CONFIG_FILE
from dpsr_tf.model.scoring import soft_dot_product_np


def _reference_window(row, excluded, ranks):
    """Brute force: every item ordered by score descending then row ascending, the excluded
    removed, ranks[0]..ranks[1] (1-based, inclusive)."""
    order = np.lexsort((np.arange(len(row)), -row))
    order = order[~np.isin(order, excluded)]
    return order[ranks[0] - 1:ranks[1]]


def test_window_hand_made_ties_and_exclusions():
    # Ranking of row 0: 0 (.9), 7 (.8), 3 (.7), then the tie at .5 by row: 1, 2, 5; 6 (.3),
    # 4 (.1). Without item 0: 7 3 1 2 5 6 4.
    row = np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.5, 0.3, 0.8], np.float32)
    scores = np.stack([row, row, row])
    got = hn.window_items(scores, [[0], [0], [1, 2]], (2, 4))
    assert [g.tolist() for g in got] == [[3, 1, 2], [3, 1, 2], [7, 3, 5]]
    # Windows past the end are clipped: ranks 4-10 without item 0 hold 2 5 6 4.
    assert hn.window_items(row[None], [[0]], (4, 10))[0].tolist() == [2, 5, 6, 4]
    assert hn.window_items(row[None], [[0]], (8, 10))[0].tolist() == []


@pytest.mark.parametrize("num_items", [50, 3000])
@pytest.mark.parametrize("ranks", [(1, 5), (11, 40), (101, 500)])
@pytest.mark.parametrize("ties", [False, True])
def test_window_matches_brute_force(num_items, ranks, ties):
    rng = np.random.default_rng(num_items + ranks[0])
    scores = rng.standard_normal((40, num_items)).astype(np.float32)
    if ties:   # two decimals: many equal scores, also at the window's edges
        scores = np.round(scores, 1).astype(np.float32)
    excluded = [rng.choice(num_items, size=rng.integers(0, 6), replace=False) for _ in range(40)]
    # Rows whose positives are their best items, as a trained model ranks them.
    excluded[0] = np.argsort(-scores[0])[:5]
    got = hn.window_items(scores, excluded, ranks)
    for i in range(40):
        np.testing.assert_array_equal(got[i], _reference_window(scores[i], excluded[i], ranks))


def test_window_falls_back_when_the_threshold_pass_misses():
    # Every top item sits on the threshold pass's stride (every 8th column), so its cut is too
    # high to hold the top 300: those rows are ranked over the whole row, still exactly.
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, size=(4, 4000)).astype(np.float32)
    scores[:, ::8] += 10.0
    got = hn.window_items(scores, [[], [0], [8, 16], []], (101, 300))
    for i, excl in enumerate([[], [0], [8, 16], []]):
        np.testing.assert_array_equal(got[i], _reference_window(scores[i], excl, (101, 300)))


def test_sample_window_is_seeded_ordered_and_short_windows_stay_whole():
    window = np.arange(100, 140)
    a = hn.sample_window(window, 5, np.random.default_rng([0, 7]))
    b = hn.sample_window(window, 5, np.random.default_rng([0, 7]))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 5 and set(a.tolist()) <= set(window.tolist())
    assert a.tolist() == sorted(a.tolist())            # the window's (rank) order
    np.testing.assert_array_equal(hn.sample_window(window[:3], 5, np.random.default_rng(0)),
                                  window[:3])


def test_positives_by_query(tiny_history_model):
    spec = tiny_history_model.spec
    rows, splits, items = hn.positives_by_query(spec, ("train",))
    rec = layout_lib.read_records(spec, "train")
    want = {}
    for r in rec:
        want.setdefault(int(r["query_row"]), set())
        if r["label_kind"] != 2:
            want[int(r["query_row"])].add(int(r["item_row"]))
    assert rows.tolist() == sorted(want)
    for i, q in enumerate(rows):
        assert items[splits[i]:splits[i + 1]].tolist() == sorted(want[int(q)])


@pytest.mark.parametrize("ranks, message", [
    ((0, 5), r"--hard_negative_ranks=0,5: expected FIRST,LAST with 1 <= FIRST <= LAST"),
    ((9, 3), r"--hard_negative_ranks=9,3: expected"),
    ((201, 400), r"--hard_negative_ranks=201,400: the window starts beyond the catalog's 200 "
                 r"items"),
])
def test_bad_ranks_name_the_flag(ranks, message):
    with pytest.raises(ValueError, match=message):
        hn.check_ranks(ranks, 200)


def test_bad_sources_name_the_flag_and_the_fix(tiny_history_model, tmp_path):
    spec = tiny_history_model.spec
    with pytest.raises(ValueError, match=r"--hard_negatives_from='/no/such': no such directory"):
        hn.check_source("/no/such", spec)
    with pytest.raises(ValueError, match=r"--hard_negatives_from=.*not a model directory"):
        hn.check_source(str(tmp_path), spec)
    # A model trained on another layout (here: the same files, another catalog size).
    other = tmp_path / "other"
    shutil.copytree(tiny_history_model.model_dir, other)
    config = json.loads((other / CONFIG_FILE).read_text())
    config["layout"]["num_items"] += 1
    (other / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"--hard_negatives_from=.*other was trained on the "
                                         r"layout .* \(num_items=201\), not on --layout_dir="
                                         r".* \(num_items=200\); mine with a model trained on "
                                         r"this layout"):
        hn.check_source(str(other), spec)


def test_mining_a_tiny_model_matches_brute_force(tiny_history_model, tmp_path):
    source, spec = tiny_history_model.model_dir, tiny_history_model.spec
    ranks, per_query = (3, 12), 4
    out = str(tmp_path / "new")
    prov = hn.mine_hard_negatives(source, spec.layout_dir, out, ranks=ranks,
                                  per_query=per_query, splits=("train",), seed=5, chunk=64,
                                  log=lambda _: None)
    items, splits = hard_negative_table.load_table(out, spec.num_queries)
    # The reference: the model's own item and query embeddings, brute-force soft dot product.
    item_emb, _ = catalog_index.embed_catalog(source)
    rows, pos_splits, pos_items = hn.positives_by_query(spec, ("train",))
    ids, tok_splits = layout_lib.load_query_tokens(spec)
    with CheckpointEmbedder(source) as emb:
        values = np.concatenate([ids[tok_splits[q]:tok_splits[q + 1]] for q in rows])
        lengths = np.array([tok_splits[q + 1] - tok_splits[q] for q in rows])
        heads = emb.embed_queries(values.astype(np.int64),
                                  np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                                  query_rows=rows)
        beta = emb.model_config.beta
    scores = soft_dot_product_np(heads, item_emb, beta)
    mined = set(rows.tolist())
    for q in range(spec.num_queries):
        got = items[splits[q]:splits[q + 1]]
        if q not in mined:
            assert len(got) == 0
    for i, q in enumerate(rows):
        positives = pos_items[pos_splits[i]:pos_splits[i + 1]]
        window = _reference_window(scores[i], positives, ranks).tolist()
        got = items[splits[q]:splits[q + 1]].tolist()
        assert len(got) == min(per_query, len(window))
        assert set(got) <= set(window) and not set(got) & set(positives.tolist())
        assert got == sorted(got, key=window.index)        # in rank order
    assert prov["queries"] == len(rows) and prov["negatives"] == len(items)
    assert prov["ranks"] == [3, 12] and prov["splits"] == ["train"] and prov["seed"] == 5
    assert prov["source_model_dir"] == os.path.abspath(source)
    # The same settings again: the table is reused, not mined again; another seed re-mines.
    again = hn.mine_hard_negatives(source, spec.layout_dir, out, ranks=ranks,
                                   per_query=per_query, splits=("train",), seed=5,
                                   log=lambda _: None)
    assert again["written"] == prov["written"]
    same = str(tmp_path / "same")
    hn.mine_hard_negatives(source, spec.layout_dir, same, ranks=ranks, per_query=per_query,
                           splits=("train",), seed=5, chunk=1000, log=lambda _: None)
    # Chunking changes the draw's RNG streams but never the windows: same sizes, same pool.
    items2, splits2 = hard_negative_table.load_table(same, spec.num_queries)
    np.testing.assert_array_equal(splits2, splits)


def test_mining_errors_name_the_flag(tiny_history_model, tmp_path):
    spec = tiny_history_model.spec
    kwargs = dict(log=lambda _: None)
    with pytest.raises(ValueError, match=r"--hard_negative_splits=train,eval"):
        hn.mine_hard_negatives(tiny_history_model.model_dir, spec.layout_dir, str(tmp_path),
                               splits=("train", "eval"), **kwargs)
    with pytest.raises(ValueError, match=r"--hard_negative_splits=nope: the layout"):
        hn.mine_hard_negatives(tiny_history_model.model_dir, spec.layout_dir, str(tmp_path),
                               splits=("nope",), **kwargs)
    with pytest.raises(ValueError, match=r"--hard_negative_ranks=500,900: the window starts "
                                         r"beyond the catalog's 200 items"):
        hn.mine_hard_negatives(tiny_history_model.model_dir, spec.layout_dir, str(tmp_path),
                               ranks=(500, 900), **kwargs)
