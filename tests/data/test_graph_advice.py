"""SearchGCN's advice from the click graph's meta: `dpsr train --tower=searchgcn` warns on a
recommendation-style graph (many clicks per training query) and stays quiet on a search log."""
import dataclasses
import logging
import os

import pytest

from dpsr_tf.data.graph.advice import (MAX_CLICKS_PER_QUERY, clicks_per_query, recommendation,
                                        searchgcn_warning)
from dpsr_tf.data.graph.tables import GraphMeta
from dpsr_tf.model.config import ModelConfig


def _meta(clicks, queries):
    return GraphMeta(num_nodes=queries + 50, num_query_nodes=queries, item_base=queries + 1,
                     attribute_bases={}, neighbors=10, two_hop=10, counts={"clicks": clicks})


@pytest.mark.parametrize("clicks,queries,warns", [
    (21678, 14, True),       # MovieLens 100K, time split: 1,548 clicks per genre query
    (40537, 8926, False),    # Home Depot: 4.5
    (31838, 5026, False),    # Best Buy, time split: 6.3
    (100 * 7, 7, False),     # at the bound: no warning
    (100 * 7 + 1, 7, True),
])
def test_warns_above_the_clicks_per_query_bound(clicks, queries, warns):
    meta = _meta(clicks, queries)
    assert clicks_per_query(meta) == pytest.approx(clicks / queries)
    warning = searchgcn_warning(meta)
    assert (warning is not None) == warns
    if warns:
        assert f"{clicks / queries:,.0f} clicks per training query" in warning
        assert "--tower=dpsr" in warning and str(int(MAX_CLICKS_PER_QUERY)) in warning


class _Spec:
    def __init__(self, layout_dir):
        self.layout_dir = layout_dir

    def path(self, rel):
        return os.path.join(self.layout_dir, rel)


@pytest.mark.parametrize("clicks,warns", [(21678, True), (60, False)])
def test_training_config_resolution_logs_the_warning(tmp_path, caplog, clicks, warns):
    os.makedirs(tmp_path / "graph")
    (tmp_path / "graph" / "meta.json").write_text(_meta(clicks, 14).to_json())
    cfg = ModelConfig(tower="searchgcn")
    with caplog.at_level(logging.WARNING):
        resolved = cfg.with_graph(_Spec(str(tmp_path)))
        dataclasses.replace(cfg, tower="dpsr").with_graph(_Spec(str(tmp_path)))  # no warning
    assert resolved.graph_num_nodes == 14 + 50
    logged = [r.getMessage() for r in caplog.records
              if "clicks per training query" in r.getMessage()]
    assert len(logged) == (1 if warns else 0)


@pytest.mark.parametrize("clicks,queries,advice,span", [
    # Home Depot: -0.0413 and -0.0398 both round to 0.04, printed once
    (40537, 8926, "compare", "SearchGCN was 0.04 Recall@100 below DPSR on Home Depot"),
    # MovieLens: -0.1065 and -0.1237 round apart, printed as a range
    (21678, 14, "off", "SearchGCN lost 0.11-0.12 Recall@100"),
])
def test_recommendation_text(clicks, queries, advice, span):
    out = recommendation(_meta(clicks, queries))
    assert out["advice"] == advice
    assert span in out["text"]
    assert "0.04-0.04" not in out["text"]
    catalogs = [m["catalog"] for m in out["measured"]]
    assert "Best Buy (the 2026-11-23 run)" in catalogs
    assert not any("older" in c for c in catalogs)
