"""Whether a layout's click graph suits SearchGCN, from its meta (docs/training.md, "SearchGCN").

The graph adds a query's top neighbours to its encoding. Where a training query has thousands of
clicks spread over many items (recommendation-style logs: MovieLens's 19 genre queries), a
bounded neighbour list is a sliver of what its users click and it pulls every user's query toward
the same few items: there SearchGCN lost Recall@100 to the DPSR towers with either neighbourhood
(docs/results.md, "SearchGCN beside DPSR"). Search logs with a few clicks per query (Home Depot
4.5, Best Buy 6.3) are where it helps rarely clicked items.
"""
from typing import Optional

from dpsr_tf.data.graph.tables import GraphMeta

# Clicks per training query above which SearchGCN is advised against: between the search logs
# it helped on (4.5, 6.3) and the recommendation log it hurt (1,548); measured, not tuned.
MAX_CLICKS_PER_QUERY = 100.0


def clicks_per_query(meta: GraphMeta) -> float:
    """Positive train records per training query (a query node)."""
    return float(meta.counts.get("clicks", 0)) / max(1, int(meta.num_query_nodes))


def searchgcn_warning(meta: GraphMeta) -> Optional[str]:
    """A warning for `dpsr train --tower=searchgcn` on a graph it is not suited to, else None."""
    per_query = clicks_per_query(meta)
    if per_query <= MAX_CLICKS_PER_QUERY:
        return None
    return (f"--tower=searchgcn on a click graph with {per_query:,.0f} clicks per training query "
            f"({meta.counts.get('clicks', 0):,} clicks, {meta.num_query_nodes:,} queries; above "
            f"{MAX_CLICKS_PER_QUERY:g}): on such recommendation-style logs SearchGCN lost "
            f"Recall@100 to the DPSR towers with fixed and sampled neighbourhoods "
            f"(docs/training.md, 'SearchGCN'); prefer --tower=dpsr, or compare both with "
            f"bench/searchgcn_subsets.py")


# Recall@100 of SearchGCN minus the DPSR towers, by catalog (docs/results.md, "SearchGCN beside
# DPSR"): (catalog, clicks per training query, fixed lists, sampled 2 layers or None).
MEASURED = (("MovieLens 100K", 1548.0, -0.1237, -0.1065),
            ("Home Depot", 4.5, -0.0413, -0.0398),
            ("Best Buy (the 2026-11-23 run)", 6.3, +0.0022, None))


def _loss_range(a: float, b: float) -> str:
    """Two losses as "lo-hi" at two decimals, or one value when both round alike."""
    lo, hi = sorted((f"{-a:.2f}", f"{-b:.2f}"), key=float)
    return lo if lo == hi else f"{lo}-{hi}"


def recommendation(meta: GraphMeta) -> dict:
    """The per-catalog advice `dpsr report` shows for a SearchGCN model.

    Returns:
      {"clicks", "queries", "clicks_per_query", "threshold", "advice": "off" | "compare",
       "text": the advice in a sentence, "measured": MEASURED as dicts}.
    """
    per_query = clicks_per_query(meta)
    if per_query > MAX_CLICKS_PER_QUERY:
        advice, text = "off", (
            f"Off: {per_query:,.1f} clicks per training query is a recommendation-style log "
            f"(above {MAX_CLICKS_PER_QUERY:g}); on MovieLens (1,548) SearchGCN lost "
            f"{_loss_range(MEASURED[0][2], MEASURED[0][3])} Recall@100 to the DPSR towers. "
            f"Train --tower=dpsr.")
    else:
        advice, text = "compare", (
            f"No measured gain: {per_query:,.1f} clicks per training query is a search log "
            f"(at most {MAX_CLICKS_PER_QUERY:g}), where SearchGCN was "
            f"{_loss_range(MEASURED[1][2], MEASURED[1][3])} Recall@100 below DPSR on Home Depot "
            f"and level on Best Buy. Keep --tower=dpsr unless bench/searchgcn_subsets.py shows "
            f"a gain on this catalog.")
    return {"clicks": int(meta.counts.get("clicks", 0)), "queries": int(meta.num_query_nodes),
            "clicks_per_query": per_query, "threshold": MAX_CLICKS_PER_QUERY, "advice": advice,
            "text": text,
            "measured": [{"catalog": c, "clicks_per_query": q, "fixed_minus_dpsr": f,
                          "sampled_minus_dpsr": s} for c, q, f, s in MEASURED]}
