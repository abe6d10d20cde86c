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
