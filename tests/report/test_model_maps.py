"""`dpsr report --compare`: one t-SNE panel per model over the same items, and each model's
category purity, checked against a recomputation from the models' own item embeddings.

The second model is the conftest report's alpha = 1 sweep model (trained on the same tiny
catalog, checkpoints kept): no training here.
"""
import json
import os

import numpy as np
import pytest

from dpsr_tf.report.page import pointer

MAP_ITEMS = 120
PURITY_K = 5


@pytest.fixture(scope="module")
def compare_report(tiny_report, tmp_path_factory):
    from dpsr_tf.report import ReportConfig, build_report  # pylint: disable=import-outside-toplevel
    from dpsr_tf.report.sweep import alpha_dir_name  # pylint: disable=import-outside-toplevel
    other = os.path.join(tiny_report["output"], "alpha_sweep", alpha_dir_name(1.0))
    output = str(tmp_path_factory.mktemp("compare") / "out")
    cfg = ReportConfig(model_dirs=(tiny_report["model_dir"], other), output=output,
                       num_random=50, map_items=MAP_ITEMS, map_queries=1, purity_k=PURITY_K,
                       command="dpsr report --model_dir=M --compare=M2 --output=O (test)")
    page = build_report(cfg, log=lambda _: None)
    with open(os.path.join(output, "evaluation.json"), encoding="utf-8") as f:
        data = json.load(f)
    with open(page, encoding="utf-8") as f:
        text = f.read()
    return {"cfg": cfg, "output": output, "data": data, "html": text}


def _item_embeddings(model_dir):
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    scorer, spec, _, _, _ = evaluate_lib.load_model_scorer(model_dir, log=lambda _: None)
    return scorer.item_emb, spec


def _brute_force_purity(emb, categories, rows, k):
    """Mean share of the k most cosine-similar other items (ties by row) with the same
    category, over the rows, in float64 (the categories of the tiny catalog are all known)."""
    v = emb.astype(np.float64) / np.linalg.norm(emb, axis=1, keepdims=True)
    shares = []
    for i in rows:
        sims = v @ v[i]
        order = [j for j in np.lexsort((np.arange(len(v)), -sims)) if j != i][:k]
        shares.append(np.mean(categories[order] == categories[i]))
    return float(np.mean(shares))


def test_one_panel_per_model_over_the_same_rows(compare_report):
    from dpsr_tf.report import projection  # pylint: disable=import-outside-toplevel
    data = compare_report["data"]
    m = data["map"]
    names = [model["name"] for model in data["models"]]
    assert len(names) == 2 and [p["name"] for p in m["models"]] == names
    rows = m["rows"]
    assert len(rows) == MAP_ITEMS == len(set(rows))
    assert all(len(p["xy"]) == len(rows) for p in m["models"])
    assert m["models"][0]["xy"] == m["xy"]
    # The compare model's panel is its own embeddings of exactly the main map's rows: t-SNE
    # (same seed) of those rows, recomputed here, gives the same coordinates.
    emb, _ = _item_embeddings(data["models"][1]["model_dir"])
    xy = projection.tsne_2d(emb[np.asarray(rows)], compare_report["cfg"].seed)
    np.testing.assert_allclose(m["models"][1]["xy"], xy, atol=1e-3)
    assert not np.allclose(m["models"][0]["xy"], m["models"][1]["xy"], atol=1e-2)


def test_side_by_side_figure_has_one_axes_per_model(compare_report):
    from dpsr_tf.report import figures  # pylint: disable=import-outside-toplevel
    data = compare_report["data"]
    fig = figures.model_maps_figure(data["map"], data["models"])
    titles = [ax.get_title() for ax in fig.axes]
    figures._plt().close(fig)  # pylint: disable=protected-access
    assert len(titles) == 2
    for title, model in zip(titles, data["models"]):
        purity = model["category_purity"]["purity"]
        assert title == f"{model['name']}\ncategory purity@{PURITY_K} = {purity:.3f}"
    path = os.path.join(compare_report["output"], "figures", "tsne_models.png")
    assert os.path.getsize(path) > 5000
    assert "src='figures/tsne_models.png'" in compare_report["html"]
    assert "src='figures/tsne.png'" in compare_report["html"]


def test_purity_of_each_model_against_a_recount(compare_report, tiny_report):
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    data = compare_report["data"]
    table = layout_lib.load_item_table(tiny_report["spec"])
    categories = np.asarray(table.feature("category"))
    # The sample: seeded, uniform, MAP_ITEMS rows; the same for every model.
    rows = np.sort(np.random.default_rng(compare_report["cfg"].seed).choice(
        len(categories), size=MAP_ITEMS, replace=False))
    for i, model in enumerate(data["models"]):
        got = model["category_purity"]
        assert got["feature"] == "category" and got["k"] == PURITY_K
        assert got["items"] == got["sampled"] == MAP_ITEMS
        emb, _ = _item_embeddings(model["model_dir"])
        assert got["purity"] == pytest.approx(_brute_force_purity(emb, categories, rows,
                                                                  PURITY_K), abs=1e-9)
        counts = np.bincount(categories)
        assert got["chance"] == pytest.approx(
            np.mean((counts[categories[rows]] - 1) / (len(categories) - 1)), abs=1e-12)
        # The page shows it, sourced from evaluation.json.
        ptr = pointer("models", i, "category_purity", "purity")
        assert f'data-json="{ptr}">{got["purity"]:.4f}<' in compare_report["html"]
