"""The report's HTML page: static, no script, figures as PNG files beside it.

Every number in a table cell carries `data-json`, the JSON pointer (RFC 6901) of the value in
evaluation.json it shows, so a reader (and the tests) can trace each one to its source.
"""
import html
import json
import math
from typing import Dict, Optional, Sequence

from dpsr_tf.report import searchgcn, table2

METRIC_COLUMNS = [("recall@10", "Recall@10"), ("recall@100", "Recall@100"),
                  ("recall@1000", "Recall@1000"), ("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10"),
                  ("top@1", "Top-1"), ("top@10", "Top-10"), ("auc", "AUC")]

CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
pre { background: #f6f6f6; padding: 6px; overflow-x: auto; font-size: 0.8em;
      white-space: pre-wrap; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
"""


def pointer(*parts) -> str:
    """JSON pointer of a path of keys / list indexes ("~" -> "~0", "/" -> "~1")."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(data, ptr: str):
    """The value at a JSON pointer (the inverse of `pointer`)."""
    node = data
    for token in ptr.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _esc(text) -> str:
    return html.escape(str(text))


class _Cells:
    """Table cells of numbers with their pointer into the data."""

    def __init__(self, data: Dict):
        self.data = data

    def num(self, parts: Sequence, digits: int = 4) -> str:
        try:
            value = resolve(self.data, pointer(*parts))
        except (KeyError, IndexError, TypeError):
            value = None
        if value is None or isinstance(value, bool) or (
                isinstance(value, float) and not math.isfinite(value)):
            return '<td class="num">&ndash;</td>'
        text = f"{value:,.{digits}f}".replace(",", "") if isinstance(value, float) else str(value)
        return f'<td class="num" data-json="{_esc(pointer(*parts))}">{text}</td>'


def _metric_row(cells: _Cells, label: str, parts: Sequence, prefix: str = "",
                note: str = "") -> str:
    tds = "".join(cells.num(list(parts) + [prefix + key]) for key, _ in METRIC_COLUMNS)
    return f"<tr><th>{_esc(label)}</th>{tds}<td>{_esc(note)}</td></tr>"


def _quality(data: Dict, cells: _Cells) -> str:
    head = "".join(f"<th>{name}</th>" for _, name in METRIC_COLUMNS)
    rows = [_metric_row(cells, f"DPSR {m['name']} (exact soft dot)", ["models", i, "metrics"],
                        note=m["metrics"].get("checkpoint", ""))
            for i, m in enumerate(data["models"])]
    rows.append(_metric_row(cells, "BM25 (bm25s over titles)", ["bm25"]))
    if data.get("hybrid"):
        name = data["models"][0]["name"]
        rows.append(_metric_row(cells, f"DPSR {name}, served through the index",
                                ["hybrid", "dpsr"], prefix="served_",
                                note=data["hybrid"]["dpsr"].get("served_factory", "")))
        rows.append(_metric_row(cells, "BM25, the build's lexical index", ["hybrid", "lexical"]))
        fusion = data["hybrid"]["hybrid"].get("fusion", {})
        if isinstance(fusion, str):
            fusion = json.loads(fusion)
        rows.append(_metric_row(cells, f"hybrid ({fusion.get('rule', 'fused')})",
                                ["hybrid", "hybrid"]))
    if data.get("hybrid"):
        shares = "".join(f"<th>{name}</th>" + cells.num(["hybrid", "hybrid", f"share_{name}@10"])
                         for name in ("dense", "lexical", "both"))
        rows_after = (f"<p class='note'>Where the hybrid's top-10 comes from (share of results "
                      f"found by the dense index only, BM25 only, both):</p><table "
                      f"id='sources-table'><tr>{shares}</tr></table>")
    else:
        rows_after = ""
    requests = data["bm25"].get("requests")
    return (f"<h2 id='quality'>1. Retrieval quality</h2>"
            f"<p>Split <code>{_esc(data['split'])}</code> of <code>{_esc(data['layout_dir'])}"
            f"</code>: {_esc(requests)} requests over {_esc(data['num_items'])} items "
            f"(full-corpus Recall/nDCG/MRR; Top-k among {_esc(data['eval_config']['num_random'])}"
            f" random items; AUC over the labelled pairs).</p>"
            f"<table id='quality-table'><tr><th>system</th>{head}<th>note</th></tr>"
            + "".join(rows) + "</table>" + rows_after)


def _curves(data: Dict, cells: _Cells, figure: Optional[str]) -> str:
    out = ["<h2 id='curves'>2. Training curves</h2>"]
    if figure:
        out.append(f"<img src='{_esc(figure)}' alt='training curves'>")
    out.append("<table id='curves-table'><tr><th>model</th><th>tag</th><th>points</th>"
               "<th>first step</th><th>first value</th><th>last step</th><th>last value</th>"
               "</tr>")
    for i, m in enumerate(data["models"]):
        for kind in ("train", "eval"):
            for tag in sorted(m["curves"][kind]):
                if not (tag == "loss" or kind == "eval" or tag.startswith("train/head_")):
                    continue
                points = m["curves"][kind][tag]
                base = ["models", i, "curves", kind, tag]
                out.append(f"<tr><td>{_esc(m['name'])}</td><td>{_esc(kind)}/{_esc(tag)}</td>"
                           f"<td class='num'>{len(points)}</td>"
                           + cells.num(base + [0, 0]) + cells.num(base + [0, 1])
                           + cells.num(base + [len(points) - 1, 0])
                           + cells.num(base + [len(points) - 1, 1]) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _heads(data: Dict, cells: _Cells, figure: Optional[str]) -> str:
    out = ["<h2 id='heads'>3. Per-head usage</h2>",
           "<p class='note'>Head h wins an item when its score e<sup>h</sup>&middot;g is the "
           "largest of the request's heads (the head the servable reports). Results: the exact "
           "soft-dot top-k of each eval request; clicked: the requests' relevant items.</p>"]
    if figure:
        out.append(f"<img src='{_esc(figure)}' alt='per-head usage'>")
    out.append("<table id='heads-table'><tr><th>model</th><th>head</th><th>share of top-10 "
               "results</th><th>share of top-100 results</th><th>share of clicked items</th>"
               "</tr>")
    for i, m in enumerate(data["models"]):
        for h in range(m["head_usage"]["num_heads"]):
            base = ["models", i, "head_usage"]
            out.append(f"<tr><td>{_esc(m['name'])}</td><td class='num'>{h}</td>"
                       + cells.num(base + ["results@10", h]) + cells.num(base + ["results@100", h])
                       + cells.num(base + ["clicked", h]) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _map(data: Dict, cells: _Cells, figure: Optional[str],
         models_figure: Optional[str]) -> str:
    m = data["map"]
    out = ["<h2 id='map'>4. Item embeddings (t-SNE)</h2>",
           f"<p class='note'>{len(m['rows'])} items of the main model, colored by "
           f"<code>{_esc(m['feature'])}</code>; marked: the top-{m['top_k']} items of each head "
           "alone for the eval queries whose heads disagree most (or those asked with "
           "--queries).</p>"]
    if figure:
        out.append(f"<img src='{_esc(figure)}' alt='t-SNE map of item embeddings'>")
    titles = m.get("titles", {})
    for p, q in enumerate(m["marked"]):
        out.append(f"<p><b>q{p + 1}: {_esc(q['query'])}</b></p><ul>")
        for h, rows in enumerate(q["heads"]):
            shown = "; ".join(_esc(titles.get(str(r), r)) for r in rows[:5])
            if "senses" in q:   # how many of the head's items are of each sense
                counts = [sum(1 for x in q["senses"][h] if x == s)
                          for s in range(len(q["intents"]))]
                shown = (", ".join(f"{c} {_esc(i)}" for c, i in zip(counts, q["intents"]))
                         + f", {len(rows) - sum(counts)} other: " + shown)
            out.append(f"<li>head {h}: {shown}{' ...' if len(rows) > 5 else ''}</li>")
        out.append("</ul>")
    if models_figure:
        out.append(f"<p class='note'>Every model over the same {len(m['rows'])} items (same "
                   "t-SNE seed, same colours):</p>"
                   f"<img src='{_esc(models_figure)}' alt='t-SNE map of each model'>")
    out.append(_purity(data, cells))
    return "".join(out)


def _purity(data: Dict, cells: _Cells) -> str:
    first = data["models"][0].get("category_purity") or {}
    k = first.get("k", "k")
    feature = first.get("feature") or "category"
    out = [f"<p class='note'>Category purity@{_esc(k)}: for each of a seeded uniform sample of "
           f"items with a known <code>{_esc(feature)}</code>, the share of its "
           f"{_esc(k)} nearest items of the catalog (cosine over the full item embeddings the "
           "index holds, not the 2-D map) that share its category, averaged; chance: the same "
           "share for random items (docs/report.md).</p>",
           "<table id='purity-table'><tr><th>model</th><th>items averaged</th>"
           f"<th>purity@{_esc(k)}</th><th>chance</th><th>note</th></tr>"]
    for i, model in enumerate(data["models"]):
        purity = model.get("category_purity") or {}
        base = ["models", i, "category_purity"]
        out.append(f"<tr><th>{_esc(model['name'])}</th>" + cells.num(base + ["items"])
                   + cells.num(base + ["purity"]) + cells.num(base + ["chance"])
                   + f"<td>{_esc(purity.get('reason', ''))}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _sweep(data: Dict, cells: _Cells, figure: Optional[str]) -> str:
    out = ["<h2 id='alpha'>5. Random-negative weight &alpha; vs popularity (paper Fig. 7)</h2>"]
    sweep = data.get("alpha_sweep")
    if not sweep:
        out.append("<p class='note'>Not run for this report: add "
                   "<code>--alpha_sweep=0,0.25,0.5,0.75,1 --sweep_steps=N</code>.</p>")
        return "".join(out)
    if figure:
        out.append(f"<img src='{_esc(figure)}' alt='alpha sweep'>")
    ks = sweep["ks"]
    head = "".join(f"<th>mean log(1+clicks) top-{k}</th><th>Recall@{k}</th>" for k in ks)
    out.append(f"<table id='alpha-table'><tr><th>&alpha;</th>{head}<th>train s</th></tr>")
    for i, run in enumerate(sweep["runs"]):
        tds = "".join(cells.num(["alpha_sweep", "runs", i, f"mean_log_popularity@{k}"])
                      + cells.num(["alpha_sweep", "runs", i, f"recall@{k}"]) for k in ks)
        out.append("<tr>" + cells.num(["alpha_sweep", "runs", i, "alpha"], 2) + tds
                   + cells.num(["alpha_sweep", "runs", i, "train_seconds"], 1) + "</tr>")
    out.append("</table><p class='note'>Catalog mean log(1+clicks): <span data-json='"
               + pointer("alpha_sweep", "catalog_mean_log_popularity") + "'>"
               + f"{sweep['catalog_mean_log_popularity']:.4f}</span>; "
               + f"{sweep['steps']} training steps per model.</p>")
    return "".join(out)


def _index(data: Dict, cells: _Cells) -> str:
    out = ["<h2 id='index'>6. Index build and search</h2>"]
    idx = data.get("index")
    if not idx:
        out.append("<p class='note'>No index given: add <code>--index_dir=</code> (a "
                   "<code>dpsr index</code> build directory).</p>")
        return "".join(out)
    man = idx["manifest"]
    rows = [("factory", _esc(man["factory"])), ("metric", _esc(man["metric"]))]
    nums = [("dimension", ["index", "manifest", "dimension"], 0),
            ("items", ["index", "manifest", "num_items"], 0),
            ("shards", ["index", "manifest", "num_shards"], 0),
            ("nprobe", ["index", "nprobe"], 0),
            ("build seconds (FAISS)", ["index", "manifest", "build_seconds"], 3),
            ("peak RSS bytes of the build", ["index", "manifest", "peak_rss_bytes"], 0),
            ("search: requests (eval split)", ["index", "search_requests"], 0),
            ("search: heads per request", ["index", "search_heads"], 0),
            ("search: k", ["index", "search_k"], 0),
            ("search: ms per request, batched", ["index", "batched_ms_per_request"], 3),
            ("search: p50 ms of one request", ["index", "single_p50_ms"], 3),
            ("search: p99 ms of one request", ["index", "single_p99_ms"], 3)]
    if man.get("lexical"):
        nums += [("BM25 build seconds", ["index", "manifest", "lexical", "build_seconds"], 3),
                 ("BM25 documents", ["index", "manifest", "lexical", "num_docs"], 0),
                 ("BM25 mean document length", ["index", "manifest", "lexical",
                                                "avg_doc_length"], 4)]
    out.append("<table id='index-table'>")
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out += [f"<tr><th>{_esc(label)}</th>{cells.num(parts, digits)}</tr>"
            for label, parts, digits in nums]
    out.append("</table><table id='shards-table'><tr><th>shard</th><th>items</th>"
               "<th>index bytes</th><th>BM25 terms</th><th>BM25 postings</th></tr>")
    lexical = (man.get("lexical") or {}).get("shards", [])
    for s, _ in enumerate(man["shards"]):
        lex = (cells.num(["index", "manifest", "lexical", "shards", s, "num_terms"])
               + cells.num(["index", "manifest", "lexical", "shards", s, "num_postings"])
               if s < len(lexical) else "<td>&ndash;</td><td>&ndash;</td>")
        out.append(f"<tr>{cells.num(['index', 'manifest', 'shards', s, 'shard'])}"
                   f"{cells.num(['index', 'manifest', 'shards', s, 'num_items'])}"
                   f"{cells.num(['index', 'manifest', 'shards', s, 'index_bytes'])}{lex}</tr>")
    out.append("</table>")
    return "".join(out)


def _commands(data: Dict) -> str:
    lines = ["<h2 id='commands'>7. Commands behind every number</h2>",
             "<p>This page, every table and figure (the evaluations below are what it ran, "
             "identical to these <code>dpsr evaluate</code> commands):</p>",
             f"<pre>{_esc(data['command'])}</pre>"]
    if data.get("evaluations_source"):
        lines.append(f"<p><b>The evaluations of section 1 were not run by that command but "
                     f"reused from {_esc(data['evaluations_source'])}</b>; the commands below "
                     f"reproduce them.</p>")
    for m in data["models"]:
        lines += [f"<p>Model <b>{_esc(m['name'])}</b>: training (its resolved "
                  f"<code>dpsr_config.json</code>) and evaluation (section 1; with --bm25 the "
                  f"BM25 row):</p>", f"<pre>{_esc(m['train_command'])}\n"
                  f"{_esc(m['evaluate_command'])}</pre>"]
    if data.get("hybrid"):
        lines += ["<p>Served, lexical-index and hybrid rows:</p>",
                  f"<pre>{_esc(data['hybrid']['command'])}</pre>"]
    if data.get("index"):
        lines.append(f"<p>Index numbers: <code>{_esc(data['index']['index_dir'])}/manifest.json"
                     f"</code> (written by <code>dpsr index</code>); search timings measured by "
                     f"this report through the faiss-cpu wheel.</p>")
    if data.get("alpha_sweep"):
        lines += ["<p>&alpha; sweep models (trained by this report):</p>",
                  "<pre>" + "\n".join(_esc(c) for c in data["alpha_sweep"]["train_commands"])
                  + "</pre>"]
    timings = "".join(f"<tr><th>{_esc(k)}</th>{_Cells(data).num(['timings', k], 1)}</tr>"
                      for k in data.get("timings", {}))
    lines.append(f"<p>Time spent building this report (seconds):</p><table id='timings'>"
                 f"{timings}</table>")
    return "".join(lines)


def render(data: Dict, figures: Dict[str, Optional[str]]) -> str:
    """The whole page as a string; `figures` maps names to paths relative to the page."""
    cells = _Cells(data)
    names = ", ".join(m["name"] for m in data["models"])
    body = [f"<h1>DPSR report: {_esc(names)}</h1>",
            "<p><a href='#quality'>quality</a> &middot; <a href='#curves'>curves</a> &middot; "
            "<a href='#heads'>heads</a> &middot; <a href='#map'>t-SNE map</a> &middot; "
            "<a href='#alpha'>&alpha; sweep</a> &middot; <a href='#index'>index</a> &middot; "
            "<a href='#commands'>commands</a>; all numbers: <a href='evaluation.json'>"
            "evaluation.json</a></p>",
            _quality(data, cells), searchgcn.render(data["models"], _esc),
            table2.render(data, cells, _esc),
            _curves(data, cells, figures.get("curves")),
            _heads(data, cells, figures.get("heads")),
            _map(data, cells, figures.get("map"), figures.get("model_maps")),
            _sweep(data, cells, figures.get("alpha")), _index(data, cells), _commands(data)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>DPSR report: {_esc(names)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def render_results(data: Dict) -> str:
    """A page of the Table 2 and paired sections alone (`dpsr report` without --model_dir)."""
    body = ["<h1>DPSR report: evaluation results</h1>", table2.render(data, _Cells(data), _esc),
            "<h2 id='commands'>Command</h2>", f"<pre>{_esc(data['command'])}</pre>"]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>DPSR report: evaluation results</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
