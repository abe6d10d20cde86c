"""The serving demo driver (called by `dpsr demo`): servers and proxy up, queries through the
real client, top items printed with their head, every process gone afterwards."""
import numpy as np

from dpsr_tf.demo import serving_demo as demo, server_processes as process
from tests.support import toy_servable as ts


def test_demo_driver_prints_top_items_and_cleans_up(shard_dirs, catalog, spec, tmp_path):
    lines = []
    queries = ["apple iphone 15 pro", "cordless drill 20v"]
    ids, emb = catalog
    titles = {i.decode(): f"title of {i.decode()}" for i in ids}
    # Other tests' servers may still run in this process (session fixtures, another order
    # under pytest-xdist): the demo must leave exactly what it found.
    before = list(process._STARTED)  # pylint: disable=protected-access
    results = demo.run_serving_demo(shard_dirs, queries, k=8, show=3, item_text=titles,
                                    out=lines.append, log_dir=str(tmp_path))
    want_ids, want_scores, want_heads = ts.reference_search(queries, ids, emb, spec, 8)
    for result, row_ids, row_scores, row_heads in zip(results, want_ids, want_scores,
                                                      want_heads):
        assert result.item_ids == [i.decode() for i in row_ids] and not result.partial
        np.testing.assert_allclose(result.scores, row_scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(result.heads, row_heads)
    text = "\n".join(lines)
    assert "2 index shards" in text and text.endswith("servers stopped")
    first = results[0]
    assert (f"   1. {first.item_ids[0]:<16} score {first.scores[0]:7.4f}  head "
            f"{first.heads[0]}  title of {first.item_ids[0]}") in text
    assert process._STARTED == before  # pylint: disable=protected-access
