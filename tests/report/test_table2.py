"""`dpsr report --table2 / --per_query`: the paper's Table 2 from named evaluation files (absent
rows say why, nothing invented) and the paired comparison, recounted with numpy."""
import json
import re

import numpy as np
import pytest

from dpsr_tf.model.model_dir import TRAIN_TIME_FILE
from dpsr_tf.report import ReportConfig, build_report
from dpsr_tf.report import page as page_lib
from dpsr_tf.report import table2


def _evaluation(path, layout="L", **systems):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"split": "eval", "layout_dir": layout, **systems}, f)
    return str(path)


def _per_query(path, system, values):
    with open(path, "w", encoding="utf-8") as f:
        for i, (r100, ndcg) in enumerate(values):
            f.write(json.dumps({"system": system, "split": "eval", "request": i,
                                "query": f"q{i}", "user_row": -1, "relevant": 1,
                                "recall@100": r100, "ndcg@10": ndcg}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("table2")
    model_dir = d / "dssm_model"
    model_dir.mkdir()
    (model_dir / TRAIN_TIME_FILE).write_text(json.dumps({"seconds": 123.4}))
    lexical = _evaluation(d / "bm25.json", bm25={"top@1": 0.1, "top@10": 0.4, "auc": 0.7,
                                                 "seconds": 2.5, "requests": 50},
                          bm25_ub={"top@1": 0.12, "top@10": 0.41, "auc": 0.71,
                                   "seconds": 3.0, "requests": 50})
    dssm = _evaluation(d / "dssm.json", dpsr={"top@1": 0.2, "top@10": 0.6, "auc": 0.8,
                                              "seconds": 9.0, "requests": 50,
                                              "checkpoint": str(model_dir / "model.ckpt-10")})
    rng = np.random.RandomState(0)
    a = rng.uniform(size=(20, 2)).round(3)
    b = np.clip(a + rng.normal(0.1, 0.1, size=a.shape), 0, 1).round(3)
    files = [_per_query(d / "a.jsonl", "bm25", a.tolist()),
             "DSSM=" + _per_query(d / "b.jsonl", "dpsr", b.tolist())]
    cfg = ReportConfig(model_dirs=(), output=str(d / "report"), command="dpsr report ...",
                       table2=("BM25=" + lexical, "BM25-u&b=" + lexical, "DSSM=" + dssm,
                               "DPSR=" + str(d / "missing.json"), "DPSR-p=" + dssm + "#bm25"),
                       per_query=tuple(files), paired_baseline="bm25")
    path = build_report(cfg, log=lambda _: None)
    with open(d / "report" / "evaluation.json", encoding="utf-8") as f:
        data = json.load(f)
    with open(path, encoding="utf-8") as f:
        html_text = f.read()
    return {"data": data, "html": html_text, "a": a, "b": b}


def test_rows_come_from_the_named_files_or_say_why_not(results):
    rows = {r["row"]: r for r in results["data"]["table2"]["rows"]}
    assert [r["row"] for r in results["data"]["table2"]["rows"]] == list(table2.PAPER_ROWS)
    assert (rows["BM25"]["top@1"], rows["BM25"]["top@10"], rows["BM25"]["auc"]) == (0.1, 0.4, 0.7)
    assert rows["BM25-u&b"]["top@10"] == 0.41 and rows["BM25-u&b"]["eval_seconds"] == 3.0
    assert rows["DSSM"]["auc"] == 0.8 and rows["DSSM"]["train_seconds"] == 123.4
    assert rows["BM25"]["train_seconds"] is None
    assert "cannot read" in rows["DPSR"]["absent"]
    assert "no system 'bm25'" in rows["DPSR-p"]["absent"]
    assert "no evaluation given" in rows["DPSR-h"]["absent"]
    for name in ("DPSR", "DPSR-p", "DPSR-h"):
        assert "top@1" not in rows[name]                  # nothing invented
    # Every number cell on the page points at the value it shows.
    cells = re.findall(r'data-json="([^"]+)">([^<]+)<', results["html"])
    assert len(cells) >= 3 * 6
    for ptr, text in cells:
        value = page_lib.resolve(results["data"], ptr.replace("&amp;", "&"))
        assert float(text) == pytest.approx(value, abs=5e-5 if "." in text else 0)


def test_paired_section_matches_numpy(results):
    paired = results["data"]["paired"]
    assert paired["requests"] == 20 and paired["baseline"] == "bm25"
    by_metric = {c["metric"]: c for c in paired["comparisons"]}
    for col, metric in enumerate(("recall@100", "ndcg@10")):
        c = by_metric[metric]
        d = results["b"][:, col] - results["a"][:, col]
        assert (c["a"], c["b"]) == ("DSSM", "bm25")
        assert c["diff"] == pytest.approx(d.mean())
        assert (c["wins"], c["losses"], c["ties"]) == ((d > 0).sum(), (d < 0).sum(),
                                                       (d == 0).sum())
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
    assert "id='paired'" in results["html"] and "id='table2'" in results["html"]


def test_bad_entry_names_the_fix():
    with pytest.raises(ValueError, match="ROW=FILE"):
        table2.parse_sources(["DSSM"])
