"""`dpsr report` on a tiny trained model: every number on the page traced to its source, and
checked against references computed here by other means (the evaluation library that `dpsr
evaluate` runs, the Estimator's own final evaluation, manifest.json, NumPy brute force)."""
import html.parser
import json
import math
import os

import numpy as np
import pytest

from dpsr_tf.report.page import pointer, resolve


class _Cells(html.parser.HTMLParser):
    """Collects (data-json pointer or None, text, enclosing table id) of every <td>/<span>."""

    def __init__(self):
        super().__init__()
        self.cells, self._stack, self._table, self.images = [], [], None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "img":
            self.images.append(attrs.get("src"))
        if tag in ("td", "span"):
            self._stack.append([attrs.get("data-json"), "", self._table])

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "span") and self._stack:
            ptr, text, table = self._stack.pop()
            self.cells.append((ptr, text.strip(), table))


@pytest.fixture(scope="module")
def page(tiny_report):
    with open(tiny_report["page"], encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(tiny_report["output"], "evaluation.json"), encoding="utf-8") as f:
        data = json.load(f)
    parser = _Cells()
    parser.feed(text)
    return {"html": text, "data": data, "cells": parser.cells, "images": parser.images}


def _close(text: str, value: float) -> bool:
    """text shows value to its own number of decimals (half a unit of the last digit)."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return math.isclose(float(text), value, abs_tol=0.5 * 10 ** -decimals + 1e-12)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _cell(page, ptr: str) -> str:
    found = [text for p, text, _ in page["cells"] if p == ptr]
    assert found, f"no cell shows {ptr}"
    return found[0]


def test_every_number_on_the_page_equals_evaluation_json(page):
    sourced = [(p, t) for p, t, _ in page["cells"] if p]
    assert len(sourced) > 60
    for ptr, text in sourced:
        assert _close(text, resolve(page["data"], ptr)), (ptr, text)
    # A number in a table either has a source or is a count/index (points, head, shard no.).
    unsourced = [(t, table) for p, t, table in page["cells"] if not p and _is_number(t)]
    assert all(table in ("curves-table", "heads-table") and float(t).is_integer()
               for t, table in unsourced), unsourced


def test_quality_table_equals_what_dpsr_evaluate_computes(page, tiny_report):
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    cfg = evaluate_lib.EvalConfig(num_random=tiny_report["cfg"].num_random)
    dpsr = evaluate_lib.evaluate_model(tiny_report["model_dir"], cfg=cfg, log=lambda _: None)
    bm25 = evaluate_lib.evaluate_bm25(tiny_report["spec"].layout_dir, cfg, log=lambda _: None)
    for parts, reference in ((["models", 0, "metrics"], dpsr), (["bm25"], bm25)):
        for key in ("recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "top@1",
                    "top@10", "auc"):
            text = _cell(page, pointer(*parts, key))
            assert _close(text, reference[key]), (parts, key, text, reference[key])
    # The hybrid rows exist (the index has a lexical section) and are sourced.
    for key in ("recall@10", "ndcg@10"):
        _cell(page, pointer("hybrid", "hybrid", key))
        _cell(page, pointer("hybrid", "lexical", key))
        _cell(page, pointer("hybrid", "dpsr", "served_" + key))


def test_curves_end_at_the_estimators_final_evaluation(page, tiny_report):
    final = tiny_report["train_result"][0]          # what train_and_evaluate returned
    curves = page["data"]["models"][0]["curves"]
    assert final["global_step"] == 60
    for tag in ("top10", "top1", "auc_labeled", "loss"):
        step, value = curves["eval"][tag][-1]
        assert step == 60
        assert value == pytest.approx(float(final[tag]), rel=1e-6)
        last = len(curves["eval"][tag]) - 1
        assert _close(_cell(page, pointer("models", 0, "curves", "eval", tag, last, 1)),
                      float(final[tag]))
    # The head diagnostic was written while training: one share per head per summary step,
    # summing to 1 (every batch of the tiny catalog has positives).
    heads = [curves["train"][f"train/head_{h}_share_of_positives"] for h in (0, 1)]
    assert len(heads[0]) == len(heads[1]) >= 5
    for (s0, v0), (s1, v1) in zip(*heads):
        assert s0 == s1 and v0 + v1 == pytest.approx(1.0, abs=1e-6)


def test_head_usage_against_numpy_brute_force(page, tiny_report):
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    scorer, _, eval_set, _, _ = evaluate_lib.load_model_scorer(
        tiny_report["model_dir"], log=lambda _: None)
    heads, items = scorer.request_emb, scorer.item_emb
    m = heads.shape[1]
    won_top10, won_clicked = np.zeros(m), np.zeros(m)
    for i in range(len(eval_set)):
        per_head = np.stack([items @ heads[i, h] for h in range(m)])       # [m, N]
        # The soft dot product with beta -> its top 10, ties by row (independent of scoring.py).
        z = per_head / scorer.beta
        w = np.exp(z - z.max(0))
        soft = (w / w.sum(0) * per_head).sum(0)
        top = sorted(range(len(soft)), key=lambda r: (-soft[r], r))[:10]
        for r in top:
            won_top10[int(np.argmax(per_head[:, r]))] += 1
        for r in eval_set.relevant(i)[0]:
            won_clicked[int(np.argmax(per_head[:, r]))] += 1
    usage = page["data"]["models"][0]["head_usage"]
    np.testing.assert_allclose(usage["results@10"], won_top10 / won_top10.sum(), atol=0.011)
    np.testing.assert_allclose(usage["clicked"], won_clicked / won_clicked.sum(), atol=1e-9)
    for h in range(m):
        assert _close(_cell(page, pointer("models", 0, "head_usage", "clicked", h)),
                      won_clicked[h] / won_clicked.sum())


def test_index_numbers_are_the_manifests(page, tiny_report):
    with open(os.path.join(tiny_report["index_dir"], "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    for key in ("num_items", "num_shards", "dimension", "build_seconds", "peak_rss_bytes"):
        assert _close(_cell(page, pointer("index", "manifest", key)), manifest[key])
    for s, shard in enumerate(manifest["shards"]):
        assert _close(_cell(page, pointer("index", "manifest", "shards", s, "num_items")),
                      shard["num_items"])
    assert _close(_cell(page, pointer("index", "manifest", "lexical", "build_seconds")),
                  manifest["lexical"]["build_seconds"])
    assert page["data"]["index"]["single_p50_ms"] > 0


def test_alpha_sweep_popularity_against_a_recount(page, tiny_report):
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    sweep = page["data"]["alpha_sweep"]
    assert [r["alpha"] for r in sweep["runs"]] == [0.0, 1.0]
    assert os.path.getsize(os.path.join(tiny_report["output"], "figures", "alpha_sweep.png"))
    clicks = {}
    for rec in layout_lib.read_records(tiny_report["spec"], "train"):
        if rec["label_kind"] != 2:
            clicks[int(rec["item_row"])] = clicks.get(int(rec["item_row"]), 0) + 1
    run = sweep["runs"][1]
    scorer, _, eval_set, _, _ = evaluate_lib.load_model_scorer(run["model_dir"],
                                                               log=lambda _: None)
    total, count = 0.0, 0
    for i in range(len(eval_set)):
        scores = scorer.score_requests(np.array([i]))[0]
        for r in np.argsort(-scores, kind="stable")[:10]:
            total += math.log(1 + clicks.get(int(r), 0))
            count += 1
    assert run["mean_log_popularity@10"] == pytest.approx(total / count, abs=1e-3)
    assert _close(_cell(page, pointer("alpha_sweep", "runs", 1, "mean_log_popularity@10")),
                  total / count)
    # alpha = 1 trains with random negatives (the softmax gets num_negatives of them).
    assert run["random_negatives"] == 8 and sweep["runs"][0]["random_negatives"] == 0


def test_page_names_its_commands_and_figures(page, tiny_report):
    text = page["html"]
    model_dir = tiny_report["model_dir"]
    assert f"dpsr train --layout_dir={tiny_report['spec'].layout_dir} --model_dir={model_dir}" \
        in text
    for flag in ("--num_heads=2", "--embedding_dim=16", "--batch_size=32", "--train_steps=60"):
        assert flag in text
    assert f"dpsr evaluate --model_dir={model_dir}" in text and "--bm25" in text
    assert "--hybrid --index_dir=" in text and "--alpha=1.0" in text
    assert sorted(page["images"]) == ["figures/alpha_sweep.png", "figures/curves.png",
                                      "figures/heads.png", "figures/tsne.png"]
    for src in page["images"]:
        assert os.path.getsize(os.path.join(tiny_report["output"], src)) > 5000
    assert "<script" not in text.lower()


def test_pointer_round_trip():
    data = {"a/b": [{"~x": 1.5}]}
    assert pointer("a/b", 0, "~x") == "/a~1b/0/~0x"
    assert resolve(data, pointer("a/b", 0, "~x")) == 1.5


def test_missing_model_dir_is_a_clear_error(tmp_path):
    from dpsr_tf.report import ReportConfig, build_report  # pylint: disable=import-outside-toplevel
    with pytest.raises(FileNotFoundError, match="not a model directory written by `dpsr train`"):
        build_report(ReportConfig(model_dirs=(str(tmp_path / "nope"),),
                                  output=str(tmp_path / "out")), log=lambda _: None)
    with pytest.raises(ValueError, match="alpha_sweep values must be in"):
        build_report(ReportConfig(model_dirs=("m",), output="o", alpha_sweep=(1.5,)))
