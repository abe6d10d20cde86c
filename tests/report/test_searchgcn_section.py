"""The report's SearchGCN section against hand-worked graphs: clicks per training query, the
advice it leads to, and the table the page shows."""
import html
import json
import os
import types

import pytest

from dpsr_tf.data.graph import tables
from dpsr_tf.report import searchgcn


def _spec(tmp_path, clicks, queries):
    os.makedirs(tmp_path / "graph", exist_ok=True)
    meta = tables.GraphMeta(num_nodes=100, num_query_nodes=queries, item_base=queries,
                            attribute_bases={}, neighbors=8, two_hop=8,
                            counts={"clicks": clicks})
    (tmp_path / "graph" / "meta.json").write_text(meta.to_json())
    return types.SimpleNamespace(path=lambda rel: str(tmp_path / rel),
                                 layout_dir=str(tmp_path))


@pytest.mark.parametrize("clicks,queries,per_query,advice,says", [
    # 21,672 / 14 = 1,548.0 (MovieLens's genre queries): above 100 -> off.
    (21672, 14, 1548.0, "off", "Off: 1,548.0 clicks per training query"),
    # 9 / 2 = 4.5 (Home Depot): a search log, no measured gain -> compare before turning on.
    (9, 2, 4.5, "compare", "No measured gain: 4.5 clicks per training query"),
    # 100 / 1 sits on the threshold, which is still a search log.
    (100, 1, 100.0, "compare", "100.0 clicks per training query"),
])
def test_advice_follows_clicks_per_query(tmp_path, clicks, queries, per_query, advice, says):
    got = searchgcn.gather({"tower": "searchgcn"}, _spec(tmp_path, clicks, queries))
    assert got["clicks_per_query"] == pytest.approx(per_query)
    assert (got["clicks"], got["queries"], got["advice"]) == (clicks, queries, advice)
    assert says in got["text"]
    json.dumps(got)                                     # evaluation.json holds it as is
    page = searchgcn.render([{"name": "gcn", "searchgcn": got}], html.escape)
    assert f"<td>gcn</td><td>{clicks:,}</td><td>{queries:,}</td><td>{per_query:,.1f}</td>" in page
    # The measured rows behind the advice, as docs/results.md has them.
    assert "<td>MovieLens 100K</td><td>1,548.0</td><td>-0.1237</td><td>-0.1065</td>" in page
    assert "<td>Home Depot</td><td>4.5</td><td>-0.0413</td><td>-0.0398</td>" in page


def test_no_section_for_other_towers_or_without_a_graph(tmp_path):
    spec = _spec(tmp_path, 9, 2)
    assert searchgcn.gather({"tower": "dpsr"}, spec) is None
    empty = types.SimpleNamespace(path=lambda rel: str(tmp_path / "none" / rel))
    assert searchgcn.gather({"tower": "searchgcn"}, empty) is None
    assert searchgcn.render([{"name": "m", "searchgcn": None}], html.escape) == ""
