"""The report's SearchGCN section: for each model trained with --tower=searchgcn, its click
graph's clicks per training query and the per-catalog advice (dpsr_tf/data/graph/advice.py)
beside the Recall@100 measured against the DPSR towers on each catalog."""
from typing import Callable, Dict, List, Optional

from dpsr_tf.data.graph import advice, tables


def gather(model_config: Dict, spec) -> Optional[Dict]:
    """advice.recommendation of the layout's graph for a searchgcn model, else None."""
    if model_config.get("tower") != "searchgcn" or not tables.has_graph(spec):
        return None
    return advice.recommendation(tables.load_meta(spec))


def render(models: List[Dict], esc: Callable[[object], str]) -> str:
    """The section's HTML ("" when no model is a SearchGCN one)."""
    rows = [(m["name"], m["searchgcn"]) for m in models if m.get("searchgcn")]
    if not rows:
        return ""
    out = ["<h2 id='searchgcn'>SearchGCN: is the click graph worth it here?</h2>",
           "<table><tr><th>model</th><th>clicks</th><th>training queries</th>"
           "<th>clicks per query</th><th>advice</th></tr>"]
    for name, r in rows:
        out.append(f"<tr><td>{esc(name)}</td><td>{r['clicks']:,}</td><td>{r['queries']:,}</td>"
                   f"<td>{r['clicks_per_query']:,.1f}</td><td>{esc(r['text'])}</td></tr>")
    out.append("</table><p>Measured Recall@100, SearchGCN minus DPSR (docs/results.md, "
               "'SearchGCN beside DPSR'):</p><table><tr><th>catalog</th>"
               "<th>clicks per query</th><th>fixed lists</th><th>sampled, 2 layers</th></tr>")
    for m in rows[0][1]["measured"]:
        sampled = ("" if m["sampled_minus_dpsr"] is None
                   else f"{m['sampled_minus_dpsr']:+.4f}")
        out.append(f"<tr><td>{esc(m['catalog'])}</td><td>{m['clicks_per_query']:,.1f}</td>"
                   f"<td>{m['fixed_minus_dpsr']:+.4f}</td><td>{sampled}</td></tr>")
    out.append("</table>")
    return "\n".join(out)
