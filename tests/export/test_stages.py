"""The servable as an ordered list of stages (dpsr_tf/export/stages/): which stages a servable
runs, the config and flags they own, a new stage added as one module, and servables written by
an earlier export still answering as they did when written."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.cli import export as export_cli  # noqa: F401  (defines the stages' flags)
from dpsr_tf.export import servable_info
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig, ServableGraph, prepare_stages
from dpsr_tf.export.stages import pipeline
from dpsr_tf.export.stages.base import ExportSource, Stage
from dpsr_tf.indexing import index_layout
from dpsr_tf.rewriting import table
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig
from tests.support import servable_answers

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")

# The fields of assets.extra/dpsr_servable.json's "servable" section as servers and ops read it;
# the stages' Config sections must keep making exactly these.
SERVABLE_FIELDS = {"default_k", "max_k", "max_query_bytes", "nprobe", "ef_search", "hybrid",
                   "fusion", "mmap_index", "rewrites", "spelling", "dense_feedback",
                   "head_min_share", "encoder_fusion"}


def test_every_servable_setting_is_owned_by_one_stage():
    owners = pipeline.field_owners()
    assert set(owners) == SERVABLE_FIELDS
    assert {f.name for f in dataclasses.fields(ServableConfig)} == SERVABLE_FIELDS
    assert owners["default_k"] == "request" and owners["nprobe"] == "dense_search"
    assert owners["spelling"] == "spelling" and owners["fusion"] == "lexical_fusion"
    assert owners["rewrites"] == "rewrites" and owners["encoder_fusion"] == "encoder_list"


@pytest.mark.parametrize("bad, message", [
    (dict(default_k=0), "need 1 <= default_k <= max_k"),
    (dict(default_k=20, max_k=10), "need 1 <= default_k <= max_k"),
    (dict(max_query_bytes=0), "max_query_bytes must be >= 1"),
    (dict(nprobe=-1), "nprobe and ef_search must be >= 0"),
    (dict(dense_feedback=FeedbackConfig(items=3, weight=0.0)), "weight"),
    (dict(encoder_fusion=EncoderFusionConfig(weight=1.0, rrf_k=-1.0)), "rrf_k must be > 0"),
])
def test_each_stage_validates_its_own_section(bad, message):
    with pytest.raises(ValueError, match=message):
        ServableConfig(**bad).validate()
    ServableConfig().validate()


def test_the_stages_flags_are_dpsr_export_flags_and_fill_their_fields():
    from absl import flags  # pylint: disable=import-outside-toplevel
    names = [flag.name for flag in pipeline.export_flags()]
    assert len(names) == len(set(names))
    for flag in pipeline.export_flags():
        assert flag.name in flags.FLAGS, flag.name
        assert flags.FLAGS[flag.name].default == flag.default, flag.name
        if flag.config_field:
            assert flag.config_field in SERVABLE_FIELDS, flag.name
    assert {"default_k", "max_k", "nprobe", "hybrid", "ranker_dir", "rewrite_combine"} <= set(names)


def _source(model, index_dir, staging, **kwargs):
    from dpsr_tf.model import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
    cfg, spec = model_dir_lib.load_model_config(model.model_dir)
    servable = kwargs.pop("servable", ServableConfig())
    return ExportSource(model_dir=model.model_dir, index_dir=index_dir, model_config=cfg,
                        layout_spec=spec, manifest=index_layout.read_manifest(index_dir),
                        shard=0, servable=servable, staging=str(staging), **kwargs)


ALL_QUERY_STAGES = ["request", "spelling", "tokenization", "user_inputs", "query_tower",
                    "dense_search", "rewrites", "lexical_fusion", "response", "item_embedding"]


@pytest.mark.parametrize("servable, rewrites, expected", [
    (ServableConfig(hybrid=False, spelling=False), False,
     ["request", "tokenization", "user_inputs", "query_tower", "dense_search", "response",
      "item_embedding"]),
    (ServableConfig(), False, [s for s in ALL_QUERY_STAGES if s != "rewrites"]),
    (ServableConfig(), True, ALL_QUERY_STAGES),
])
def test_a_servable_runs_only_the_stages_that_apply(tiny_history_model, tiny_flat_index,
                                                     tmp_path, servable, rewrites, expected):
    rewrite_table = None
    if rewrites:
        rewrite_table = str(tmp_path / "rw.tsv")
        table.write_table(rewrite_table, [("lamp", [("light", -1.0)])])
    staging = tmp_path / "staging"
    staging.mkdir()
    stages = prepare_stages(_source(tiny_history_model, tiny_flat_index, staging,
                                    servable=servable, rewrite_table=rewrite_table))
    assert [s.NAME for s in stages] == expected


def test_rewrites_without_a_lexical_index_name_the_fix(tiny_history_model, tiny_flat_index,
                                                       tmp_path):
    table.write_table(str(tmp_path / "rw.tsv"), [("lamp", [("light", -1.0)])])
    source = _source(tiny_history_model, tiny_flat_index, tmp_path,
                     servable=ServableConfig(hybrid=False), rewrite_table=str(tmp_path / "rw.tsv"))
    with pytest.raises(ValueError, match="--nohybrid was given.*dpsr index --lexical"):
        prepare_stages(source)


class _QueryLengthStage(Stage):
    """A stage as a new one would be written: one module's worth, adding one output."""

    NAME = "query_length"

    def rank(self, ctx, ranked, direction):
        del direction
        return dict(ranked, query_bytes=tf.strings.length(ctx.query))


def test_a_new_stage_is_one_class_in_the_list(tiny_history_model, tiny_flat_index, tmp_path):
    response = pipeline.STAGES.index(pipeline.ResponseStage)
    stages_list = (pipeline.STAGES[:response] + (_QueryLengthStage,)
                   + pipeline.STAGES[response:])
    servable = ServableConfig(hybrid=False)
    stages = prepare_stages(_source(tiny_history_model, tiny_flat_index, tmp_path,
                                    servable=servable), stages_list)
    from dpsr_tf.model import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
    cfg, spec = model_dir_lib.load_model_config(tiny_history_model.model_dir)
    with tf.Graph().as_default():
        graph = ServableGraph(cfg, spec, stages, servable)
    assert "query_length" in graph.stage_names
    _, outputs = graph.signatures["serving_default"]
    assert set(outputs) == {"item_ids", "scores", "heads", "query_bytes"}


def test_the_servable_records_the_stages_it_runs(tiny_history_model, tiny_flat_index, tmp_path):
    path = export_servable(tiny_history_model.model_dir, tiny_flat_index, str(tmp_path / "m"),
                           servable=ServableConfig(default_k=5, max_k=50, hybrid=False,
                                                   spelling=False))
    info = servable_info.read_servable_info(path)
    assert info["stages"] == ["request", "tokenization", "user_inputs", "query_tower",
                              "dense_search", "response", "item_embedding"]
    assert info["hybrid"] is False and info["servable"]["default_k"] == 5
    assert set(info["servable"]) == SERVABLE_FIELDS
    assert servable_info.read_servable_info(str(tmp_path)) is None


@pytest.mark.parametrize("kind", ["dense", "hybrid_rw_fb"])
def test_servables_exported_earlier_answer_as_when_written(kind):
    """testdata/exported_<kind>/1 was written by an earlier `dpsr export` of the tiny model
    (dense only; hybrid with the speller, a rewrite table and dense feedback), and
    exported_<kind>_answers.npz holds every signature's answers recorded then
    (tests/support/servable_answers.py). Today's op library must load it and answer the same."""
    version = os.path.join(TESTDATA, f"exported_{kind}", "1")
    with open(servable_info.servable_info_path(version)) as f:
        assert json.load(f)["servable"]["hybrid"] == (kind != "dense")
    recorded = dict(np.load(os.path.join(TESTDATA, f"exported_{kind}_answers.npz"),
                            allow_pickle=True))
    now = servable_answers.answers(version)
    assert sorted(now) == sorted(recorded)
    assert "serving_default/item_ids" in now and len(now) >= 8
    for key, value in recorded.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(now[key], value, rtol=0, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(now[key], value, err_msg=key)
