"""Catalog pseudo-queries: golden word splits, every kind drawn only from the item's own text and
attributes, determinism by (seed, item), the "pseudo" record split written by prepare, and the
pipeline's mix of pseudo-queries with logged interactions by ratio and schedule."""
import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pipeline
from dpsr_tf.data import pseudo_queries as pq
from dpsr_tf.tokenization import Tokenizer


@pytest.mark.parametrize("title, words", [
    ("Simpson Strong-Tie 12-Gauge Angle", ["Simpson", "Strong-Tie", "12-Gauge", "Angle"]),
    ("BEHR Premium (1-gal.) #SC-141, Tugboat", ["BEHR", "Premium", "1-gal.", "#SC-141",
                                               "Tugboat"]),
    ("苹果手机壳 透明", ["苹果", "手机", "壳", "透明"]),
    ("Apple苹果iPhone 15", ["Apple", "苹果", "iPhone", "15"]),
    ("  ", []),
    ("“quoted” [x]", ["quoted", "x"]),
    ("Item - B & C", ["Item", "B", "C"]),
])
def test_split_words_golden(title, words):
    assert pq.split_words(title) == words


TITLE = "Simpson Strong-Tie 12-Gauge Angle Bracket Zinc"


def test_every_kind_uses_only_the_items_own_text():
    words = pq.split_words(TITLE)
    attrs = ["simpson", "hardware"]
    for kind, weights in (("span", (1, 0, 0)), ("subset", (0, 1, 0)),
                          ("attribute", (0, 0, 1))):
        cfg = pq.PseudoQueryConfig(per_item=50, max_words=3, kind_weights=weights, seed=1)
        out = pq.item_pseudo_queries(TITLE, attrs, 5, cfg)
        assert len(out) == 50
        for text in out:
            parts = text.split(" ")
            assert 1 <= len(parts) <= 3 or kind == "attribute"
            assert all(p in words or p in attrs for p in parts), (kind, text)
            if kind == "span":   # contiguous in the title
                start = words.index(parts[0])
                assert words[start:start + len(parts)] == parts
            if kind == "subset":  # in title order, at least 2 words
                idx = [words.index(p) for p in parts]
                assert idx == sorted(idx) and len(parts) >= 2
            if kind == "attribute":
                assert any(p in attrs for p in parts)


def test_attribute_kind_falls_back_to_a_span_without_attributes():
    cfg = pq.PseudoQueryConfig(per_item=20, kind_weights=(0, 0, 1))
    words = pq.split_words(TITLE)
    for text in pq.item_pseudo_queries(TITLE, ["", ""], 0, cfg):
        parts = text.split(" ")
        start = words.index(parts[0])
        assert words[start:start + len(parts)] == parts


def test_deterministic_per_seed_and_item():
    cfg = pq.PseudoQueryConfig(per_item=6, seed=3)
    a = pq.item_pseudo_queries(TITLE, [], 7, cfg)
    assert a == pq.item_pseudo_queries(TITLE, [], 7, cfg)
    assert a != pq.item_pseudo_queries(TITLE, [], 8, cfg)
    assert a != pq.item_pseudo_queries(TITLE, [], 7, pq.PseudoQueryConfig(per_item=6, seed=4))
    texts, rows = pq.generate([TITLE, "", "Red Apple"], None, cfg)
    assert rows.tolist() == [0] * 6 + [2] * 6            # an item without words gets none
    assert texts[:6] == pq.item_pseudo_queries(TITLE, [], 0, cfg)


@pytest.mark.parametrize("kwargs", [dict(per_item=-1), dict(max_words=0),
                                    dict(kind_weights=(0, 0, 0)),
                                    dict(kind_weights=(1, 1)), dict(kind_weights=(1, -1, 1))])
def test_bad_config(kwargs):
    with pytest.raises(ValueError, match="pseudo-quer"):
        pq.PseudoQueryConfig(**kwargs)


def test_prepare_writes_the_pseudo_split(tiny_layout):
    spec = layout_lib.load_layout_spec(tiny_layout)
    items = layout_lib.load_item_table(spec)
    queries = layout_lib.load_queries(spec)
    pseudo = layout_lib.read_records(spec, "pseudo")
    logged = sum(spec.counts["splits"][s]["queries"] for s in ("train", "eval", "validation"))
    assert spec.counts["pseudo_queries"] == len(pseudo) == len(queries) - logged
    assert len(pseudo) == 16 * spec.num_items      # every synthetic title has words
    # Same texts as the generator, tokenized like every other query, never in eval.
    cfg = pq.PseudoQueryConfig()
    per_item = {}
    for r in pseudo:
        per_item.setdefault(int(r["item_row"]), []).append(queries[r["query_row"]])
    for row in (0, 17, spec.num_items - 1):
        attrs = [items.vocabularies[n][items.features[row, j]]
                 for j, n in enumerate(spec.item_features)]
        assert sorted(per_item[row]) == sorted(pq.item_pseudo_queries(items.titles[row], attrs,
                                                                      row, cfg))
    assert (pseudo["label_kind"] == 0).all() and (pseudo["user_row"] == -1).all()
    lower = {queries[r].lower() for r in pseudo["query_row"]}
    eval_texts = {queries[r] for r in layout_lib.read_records(spec, "eval")["query_row"]}
    assert spec.counts["eval_queries_equal_to_a_pseudo_query"] == sum(
        t.lower() in lower for t in eval_texts)
    eval_rows = set(layout_lib.read_records(spec, "eval")["query_row"].tolist())
    assert not eval_rows & set(pseudo["query_row"].tolist())
    ids, splits = layout_lib.load_query_tokens(spec)
    q = int(pseudo[0]["query_row"])
    want, _ = Tokenizer(spec.tokenizer_config).tokenize([queries[q]])
    assert ids[splits[q]:splits[q + 1]].tolist() == want.tolist()


def _pseudo_share(layout, mix, steps, batch=64, seed=5):
    spec = layout_lib.load_layout_spec(layout)
    first_pseudo = spec.num_queries - spec.counts["pseudo_queries"]
    fn = pipeline.make_train_input_fn(layout, batch_size=batch, num_random_negatives=1,
                                      seed=seed, pseudo_mix=mix)
    shares = []
    for i, batch_features in enumerate(fn()):
        if i == steps:
            break
        shares.append(float(np.mean(batch_features["query_row"].numpy() >= first_pseudo)))
    return np.array(shares)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_mix_ratio(tiny_layout, ratio):
    shares = _pseudo_share(tiny_layout, pipeline.PseudoQueryMix(ratio), 40)
    # 40 x 64 Bernoulli(ratio) draws: the mean is within 4 standard deviations.
    sd = np.sqrt(ratio * (1 - ratio) / (40 * 64))
    assert abs(shares.mean() - ratio) <= 4 * sd + 1e-9


def test_mix_schedule_is_linear_then_constant(tiny_layout):
    mix = pipeline.PseudoQueryMix(0.9, final_ratio=0.1, decay_steps=40)
    shares = _pseudo_share(tiny_layout, mix, 80)
    expected = np.array([0.9 - 0.8 * min(s / 40.0, 1.0) for s in range(80)])
    # Means over 20-step windows against the schedule's (sd of a window mean <= 0.0078).
    for lo in range(0, 80, 20):
        assert abs(shares[lo:lo + 20].mean() - expected[lo:lo + 20].mean()) < 0.04


def test_a_resumed_mix_goes_on_with_the_schedule(tiny_layout):
    """start_step (a resumed run's trained steps): the input's step 0 takes the share of the
    schedule's step 30, so the share does not jump back to its start."""
    mix = pipeline.PseudoQueryMix(0.9, final_ratio=0.1, decay_steps=40, start_step=30)
    assert float(mix.at_step(0)) == pytest.approx(0.9 - 0.8 * 30 / 40)
    assert float(mix.at_step(10)) == pytest.approx(0.1)
    shares = _pseudo_share(tiny_layout, mix, 40)
    expected = np.array([0.9 - 0.8 * min((s + 30) / 40.0, 1.0) for s in range(40)])
    for lo in range(0, 40, 20):
        assert abs(shares[lo:lo + 20].mean() - expected[lo:lo + 20].mean()) < 0.04
    with pytest.raises(ValueError, match="start_step"):
        pipeline.PseudoQueryMix(0.9, start_step=-1)


def test_mix_is_seeded(tiny_layout):
    mix = pipeline.PseudoQueryMix(0.5)
    np.testing.assert_array_equal(_pseudo_share(tiny_layout, mix, 5, seed=9),
                                  _pseudo_share(tiny_layout, mix, 5, seed=9))
    assert not np.array_equal(_pseudo_share(tiny_layout, mix, 5, seed=9),
                              _pseudo_share(tiny_layout, mix, 5, seed=10))


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_bad_mix(value):
    with pytest.raises(ValueError, match="pseudo-query ratio"):
        pipeline.PseudoQueryMix(value)


def test_layout_without_pseudo_queries_is_a_clear_error(tiny_catalog, tmp_path):
    from dpsr_tf.data import prepare as prepare_lib  # pylint: disable=import-outside-toplevel
    out = str(tmp_path / "layout")
    prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=tiny_catalog.items_path, users=tiny_catalog.users_path,
        interactions=tiny_catalog.interactions_path, output=out,
        pseudo_queries=pq.PseudoQueryConfig(per_item=0)), log=lambda *_: None)
    fn = pipeline.make_train_input_fn(out, batch_size=8, seed=1,
                                      pseudo_mix=pipeline.PseudoQueryMix(0.5))
    with pytest.raises(ValueError, match="--pseudo_queries_per_item"):
        fn()
    # Without a mix the logged interactions alone still train.
    ok = pipeline.make_train_input_fn(out, batch_size=8, seed=1,
                                      pseudo_mix=pipeline.PseudoQueryMix(0.0))
    assert next(iter(ok()))["query_row"].shape == (8,)


def test_max_total_caps_the_pool_of_a_large_catalog():
    titles = [f"red widget number {i}" for i in range(50)]
    texts, rows = pq.generate(titles, None, pq.PseudoQueryConfig(per_item=16, max_total=120))
    assert np.bincount(rows).tolist() == [2] * 50            # 120 // 50 = 2 per item
    texts, rows = pq.generate(titles, None, pq.PseudoQueryConfig(per_item=16, max_total=10))
    assert np.bincount(rows).tolist() == [1] * 50            # never fewer than one
    with pytest.raises(ValueError, match="max_total"):
        pq.PseudoQueryConfig(max_total=0)
