"""The paper's Table 2 (Top-1, Top-10, AUC, time per system) and the paired comparison, from
evaluation results the user names; a row without a result is shown absent, with the reason.

Sources (`dpsr report --table2=ROW=FILE[#SYSTEM],...`): FILE is a `dpsr evaluate --output`
JSON file; SYSTEM the entry of it to read (default: "bm25" for the BM25 row, "bm25_ub" for
BM25-u&b, "dpsr" otherwise). Time: the seconds `dpsr evaluate` spent scoring the split with
that system ("seconds" of the entry: full-corpus retrieval, Top-k among random items, AUC), and
the training wall time of the checkpoint's model directory when `dpsr train` recorded it
(TRAIN_TIME_FILE; BM25 has no training).

Paired comparison (`--per_query=[LABEL=]FILE,...`, files of `dpsr evaluate --per_query`):
dpsr_tf/evaluation/paired.py over the requests every system answered.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

from dpsr_tf.evaluation import paired as paired_lib
from dpsr_tf.evaluation import per_query as per_query_lib
from dpsr_tf.model.model_dir import TRAIN_TIME_FILE

PAPER_ROWS = ("BM25", "BM25-u&b", "DSSM", "DPSR", "DPSR-p", "DPSR-h")
DEFAULT_SYSTEM = {"BM25": "bm25", "BM25-u&b": "bm25_ub"}
COLUMNS = (("top@1", "Top-1"), ("top@10", "Top-10"), ("auc", "AUC"))


def parse_sources(specs: Sequence[str]) -> Dict[str, tuple]:
    """{row: (file, system)} from ROW=FILE[#SYSTEM] entries.

    Raises:
      ValueError: an entry without "=", or a row named twice.
    """
    out = {}
    for spec in specs:
        row, sep, rest = spec.partition("=")
        if not sep or not row or not rest:
            raise ValueError(f"--table2 entry {spec!r}: expected ROW=FILE[#SYSTEM], e.g. "
                             "DSSM=dssm.metrics.json or BM25-u&b=bm25.metrics.json#bm25_ub")
        if row in out:
            raise ValueError(f"--table2: row {row!r} is given twice")
        path, _, system = rest.partition("#")
        out[row] = (path, system or DEFAULT_SYSTEM.get(row, "dpsr"))
    return out


def _train_seconds(checkpoint: Optional[str]) -> Optional[float]:
    if not checkpoint:
        return None
    path = os.path.join(os.path.dirname(checkpoint), TRAIN_TIME_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["seconds"])


def gather_table(specs: Sequence[str]) -> Dict:
    """{"rows": [...], "notes": [...]}: the paper's rows first, then any other named row.

    Each row: {"row", "source", "system", "top@1", "top@10", "auc", "eval_seconds",
    "train_seconds", "requests", "absent"} with absent = None or why the row has no numbers.
    """
    sources = parse_sources(specs)
    rows, splits = [], set()
    for name in list(PAPER_ROWS) + [r for r in sources if r not in PAPER_ROWS]:
        row = {"row": name, "source": None, "system": None, "absent": None}
        if name not in sources:
            row["absent"] = "no evaluation given (--table2=" + name + "=FILE)"
            rows.append(row)
            continue
        path, system = sources[name]
        row.update(source=path, system=system)
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            row["absent"] = f"cannot read {path}: {e}"
            rows.append(row)
            continue
        entry = result.get(system)
        if not isinstance(entry, dict):
            systems = sorted(k for k, v in result.items() if isinstance(v, dict))
            row["absent"] = f"{path} has no system {system!r} (it has {systems})"
        else:
            for key, _ in COLUMNS:
                row[key] = entry.get(key)
            row["requests"] = entry.get("requests")
            row["eval_seconds"] = entry.get("seconds")
            row["train_seconds"] = _train_seconds(entry.get("checkpoint"))
            splits.add((result.get("layout_dir"), result.get("split"), entry.get("requests")))
        rows.append(row)
    notes = []
    if len({(split, requests) for _, split, requests in splits}) > 1:
        notes.append("the rows were evaluated on different splits or requests ("
                     + "; ".join(f"{layout} / {split}: {requests} requests" for
                                 layout, split, requests in sorted(splits, key=str))
                     + "), so they do not compare")
    elif len(splits) > 1:
        # DSSM reads a letter-trigram layout of the same files: same split, other tokens.
        notes.append("layouts: " + ", ".join(sorted(str(layout) for layout, _, _ in splits))
                     + f"; the same split and number of requests ({next(iter(splits))[2]}); "
                     "they compare if they were prepared from the same files and split rule")
    return {"rows": rows, "notes": notes, "layouts": sorted(
        [{"layout_dir": l, "split": s, "requests": n} for l, s, n in splits], key=str)}


def gather_paired(per_query_files: Sequence[str], baseline: Optional[str] = None,
                  metrics: Sequence[str] = paired_lib.DEFAULT_METRICS, seed: int = 0
                  ) -> Dict:
    """{"requests", "systems", "baseline", "comparisons": [PairedResult.to_json()]}.

    Raises:
      ValueError, OSError: unreadable files, fewer than two systems, no common request.
    """
    keys, per_system = per_query_lib.align(per_query_lib.read_jsonl(list(per_query_files)))
    comparisons = paired_lib.compare_systems(per_system, metrics, baseline, seed=seed)
    return {"requests": len(keys), "systems": list(per_system), "baseline": baseline,
            "files": list(per_query_files), "comparisons": [c.to_json() for c in comparisons]}


def render(data: Dict, cells, esc) -> str:
    """The two sections' HTML ("table2" and "paired" of the report data; either may be
    missing). `cells` is the page's number-cell writer, `esc` its HTML escape."""
    out: List[str] = []
    table = data.get("table2")
    if table:
        head = "".join(f"<th>{name}</th>" for _, name in COLUMNS)
        out += ["<h2 id='table2'>Paper Table 2: Top-1, Top-10, AUC, time</h2>",
                "<p class='note'>Top-k: the clicked item's rank among the evaluation's random "
                "items (`dpsr evaluate --num_random`, 1,024 by default as in the paper); AUC "
                "over the split's labelled pairs; evaluation time: "
                "seconds `dpsr evaluate` spent scoring the split with the system; training "
                "time: the model directory's recorded wall time. Absent rows name why.</p>",
                f"<table id='table2'><tr><th>system</th>{head}<th>evaluation s</th>"
                f"<th>training s</th><th>requests</th><th>source</th></tr>"]
        for i, row in enumerate(table["rows"]):
            if row["absent"]:
                out.append(f"<tr><th>{esc(row['row'])}</th><td colspan='{len(COLUMNS) + 3}'>"
                           f"absent: {esc(row['absent'])}</td><td></td></tr>")
                continue
            tds = "".join(cells.num(["table2", "rows", i, key]) for key, _ in COLUMNS)
            tds += cells.num(["table2", "rows", i, "eval_seconds"], 1)
            tds += cells.num(["table2", "rows", i, "train_seconds"], 1)
            tds += cells.num(["table2", "rows", i, "requests"])
            out.append(f"<tr><th>{esc(row['row'])}</th>{tds}<td>{esc(row['source'])}"
                       f"#{esc(row['system'])}</td></tr>")
        out.append("</table>")
        out += [f"<p class='note'><b>{esc(n)}</b></p>" for n in table["notes"]]
    paired = data.get("paired")
    if paired:
        out += ["<h2 id='paired'>Paired comparison over the same requests</h2>",
                f"<p class='note'>{paired['requests']} requests answered by every system "
                f"({esc(', '.join(paired['systems']))}); mean difference a - b, its 95% paired "
                "bootstrap interval and the two-sided sign-flip p-value "
                "(dpsr_tf/evaluation/paired.py).</p>",
                "<table id='paired'><tr><th>metric</th><th>a</th><th>b</th><th>mean a</th>"
                "<th>mean b</th><th>a - b</th><th>95% low</th><th>95% high</th><th>p</th>"
                "<th>a better</th><th>b better</th><th>ties</th></tr>"]
        for i, c in enumerate(paired["comparisons"]):
            nums = "".join(cells.num(["paired", "comparisons", i, key]) for key in (
                "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "wins", "losses",
                "ties"))
            out.append(f"<tr><td>{esc(c['metric'])}</td><td>{esc(c['a'])}</td>"
                       f"<td>{esc(c['b'])}</td>{nums}</tr>")
        out.append("</table>")
    return "\n".join(out)
