"""Time and peak memory of the click-graph build on a generated click stream.

    python bench/graph_build_bench.py --clicks=10000000 --queries=1000000 --items=1000000

Clicks are drawn chunk by chunk (Zipf-like query and item popularity, seeded) and fed to
dpsr_tf.data.graph.build.graph_tables, the code `dpsr prepare --graph` runs after reading the
train records the same way (a memory-mapped chunk at a time), so the stream itself never exists
in memory. Prints one JSON line: seconds, peak RSS (MB), nodes, kept query-item pairs.
"""
import json
import resource
import sys
import time

import numpy as np
from absl import app, flags

from dpsr_tf.data.graph.build import GraphConfig, graph_tables

_CLICKS = flags.DEFINE_integer("clicks", 10_000_000, "Clicks in the stream.")
_QUERIES = flags.DEFINE_integer("queries", 1_000_000, "Distinct query rows.")
_ITEMS = flags.DEFINE_integer("items", 1_000_000, "Item rows.")
_FEATURES = flags.DEFINE_list("feature_sizes", ["5000", "500", "50"],
                              "Vocabulary sizes of the item attributes (brand, shop, category).")
_CHUNK = flags.DEFINE_integer("chunk", 1 << 20, "Clicks per chunk.")


def _popular(rng, n, size):
    """Zipf-like rows in [0, n): a few heads, a long tail."""
    return np.minimum((rng.pareto(1.2, size) * n / 50).astype(np.int64), n - 1)


def _stream(clicks, nq, ni, chunk, seed=0):
    rng = np.random.RandomState(seed)
    for lo in range(0, clicks, chunk):
        size = min(chunk, clicks - lo)
        q = _popular(rng, nq, size)
        # An item a query clicks is near the query's own "intent" item, so pairs repeat.
        i = (q * 7919 + rng.randint(0, 30, size)) % ni
        yield q, i


def main(argv):
    del argv
    sizes = {f"f{j}": int(v) for j, v in enumerate(_FEATURES.value)}
    rng = np.random.RandomState(1)
    features = np.stack([rng.randint(1, v, _ITEMS.value) for v in sizes.values()], axis=1)
    start = time.monotonic()
    meta, _ = graph_tables(_stream(_CLICKS.value, _QUERIES.value, _ITEMS.value, _CHUNK.value),
                           _QUERIES.value, _ITEMS.value, features, sizes,
                           GraphConfig(chunk_records=_CHUNK.value), log=lambda m: print(
                               m, file=sys.stderr, flush=True))
    print(json.dumps({"clicks": _CLICKS.value, "queries": _QUERIES.value, "items": _ITEMS.value,
                      "seconds": round(time.monotonic() - start, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024, 1),
                      "nodes": meta.num_nodes, "query_nodes": meta.num_query_nodes,
                      "pairs_kept": meta.counts["query_item_pairs_kept"]}))


if __name__ == "__main__":
    sys.exit(app.run(main))
