"""The encoder list end to end on the tiny catalog: `dpsr index --encoder_only` builds the exact
index of all-MiniLM-L6-v2's title embeddings (numpy brute force over TextEmbedder's), a
servable fuses its list with the hybrid one exactly as encoder_fusion.fuse_np does over the
hybrid servable's answer and that index's list, `dpsr export` chooses the weight on the
validation split, and a sharded build is refused."""
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import encoder_choice, hybrid
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index, encoder_index, index_layout
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig, fuse_np
from tests.support.fresh_python import ROOT, serving_default_answers

# The last is longer than the encoder list reads (QUERY_MAX_TOKENS): servable and evaluation
# must cut it alike.
QUERIES = ["cat3 brand5", "w17 w203", "brand1 w99 cat0", "ЖЖ 中文 nothing known",
           " ".join(f"brand{i} w{i * 7}" for i in range(60))]
QUIET = lambda _: None   # noqa: E731


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_history_model, tiny_flat_index):
    """Copies of the tiny layout (the encoder's cache is written beside it) and of its Flat
    build, with an encoder list added."""
    work = tmp_path_factory.mktemp("encoder_list")
    layout = str(work / "layout")
    shutil.copytree(tiny_history_model.spec.layout_dir, layout)
    index_dir = str(work / "index")
    shutil.copytree(tiny_flat_index, index_dir)
    manifest = encoder_index.add_encoder_index(index_dir, layout, log=QUIET)
    return types.SimpleNamespace(work=work, layout=layout, index_dir=index_dir,
                                 manifest=manifest, model_dir=tiny_history_model.model_dir,
                                 spec=layout_lib.load_layout_spec(layout))


def test_encoder_index_is_brute_force_cosine(build):
    assert build.manifest.encoder.dimension == 384
    assert build.manifest.encoder.num_docs == build.spec.num_items
    assert index_layout.read_manifest(build.index_dir).encoder == build.manifest.encoder
    documents = item_text.item_documents(build.spec, item_text.parse_fields("title"))
    with TextEmbedder() as embedder:
        items, whole = embedder.embed(documents), embedder.embed(QUERIES)
    with TextEmbedder(max_seq_length=encoder_index.QUERY_MAX_TOKENS) as embedder:
        queries = embedder.embed(QUERIES)
    np.testing.assert_allclose(queries[:-1], whole[:-1], atol=1e-5)   # short: not cut
    assert np.abs(queries[-1] - whole[-1]).max() > 1e-3                # the long one is
    cosine = queries @ items.T
    k = 9
    scores, rows = hybrid.search_encoder_lists(
        build.index_dir, layout_lib.load_item_ids(build.spec), QUERIES, k)
    np.testing.assert_allclose(scores, -np.sort(-cosine, axis=1)[:, :k], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(cosine, rows, 1), scores, atol=1e-5)
    assert all(len(set(r)) == k for r in rows.tolist())


def _answers(path, k, outputs):
    return serving_default_answers(path, QUERIES, k, outputs)


def test_servable_fuses_the_hybrid_list_with_the_encoder_list(build):
    cfg = EncoderFusionConfig(weight=2.0, rrf_k=1.0)   # the encoder's first hits lead
    common = dict(default_k=5, max_k=50, spelling=False)
    with_list = export_servable(build.model_dir, build.index_dir, str(build.work / "enc"),
                                layout_dir=build.layout,
                                servable=ServableConfig(**common, encoder_fusion=cfg))
    without = export_servable(build.model_dir, build.index_dir, str(build.work / "plain"),
                              layout_dir=build.layout, servable=ServableConfig(**common))
    with open(os.path.join(with_list, "assets.extra", "dpsr_servable.json")) as f:
        info = json.load(f)
    assert "encoder_list" in info["stages"]
    assert info["servable"]["encoder_fusion"] == {"rrf_k": 1.0, "weight": 2.0}
    k = 7
    got = _answers(with_list, k, ["item_ids", "scores", "source", "encoder_scores",
                                  "dense_scores", "heads"])
    served = _answers(without, k, ["item_ids", "source", "dense_scores", "heads"])
    ids = layout_lib.load_item_ids(build.spec)
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    served_rows = np.array([[row_of.get(i, -1) for i in row] for row in served["item_ids"]])
    enc_scores, enc_rows = hybrid.search_encoder_lists(build.index_dir, ids, QUERIES, k)
    want_scores, want_rows, served_at = fuse_np(served_rows, enc_rows, k, cfg)
    assert got["item_ids"] == [[ids[r] if r >= 0 else "" for r in row] for row in want_rows]
    np.testing.assert_allclose(got["scores"], want_scores, rtol=1e-6)
    assert (served_at == -1).any(), "some result should come from the encoder list alone"
    for q in range(len(QUERIES)):
        enc_of = dict(zip(enc_rows[q].tolist(), enc_scores[q].tolist()))
        for j, row in enumerate(want_rows[q]):
            at = served_at[q, j]
            assert got["source"][q][j] == (served["source"][q][at] if at >= 0 else "encoder")
            want_dense = served["dense_scores"][q][at] if at >= 0 else -np.inf
            np.testing.assert_allclose(got["dense_scores"][q][j], want_dense, rtol=1e-6)
            assert got["heads"][q][j] == (served["heads"][q][at] if at >= 0 else -1)
            np.testing.assert_allclose(got["encoder_scores"][q][j], enc_of.get(row, -np.inf),
                                       atol=1e-5)


def test_sharded_build_lists_the_same_items_and_is_not_exported_with_a_weight(build):
    """64 shards of 40 items: the shards' lists merge to the one-shard list, empty shards
    included."""
    index_dir = str(build.work / "many_shards")
    catalog_index.index_catalog(build.model_dir, index_dir, IndexBuildConfig(
        factory="Flat", num_shards=64), layout_dir=build.layout, lexical=None)
    manifest = encoder_index.add_encoder_index(index_dir, build.layout, log=QUIET)
    assert any(info.num_items == 0 for info in manifest.shards)
    ids = layout_lib.load_item_ids(build.spec)
    one = hybrid.search_encoder_lists(build.index_dir, ids, QUERIES, 6)
    two = hybrid.search_encoder_lists(index_dir, ids, QUERIES, 6)
    np.testing.assert_allclose(two[0], one[0], atol=1e-6)
    with pytest.raises(ValueError, match="holds the whole catalog, and this build has 64 shards"):
        export_servable(build.model_dir, index_dir, str(build.work / "sharded"),
                        layout_dir=build.layout, servable=ServableConfig(
                            hybrid=False, encoder_fusion=EncoderFusionConfig(weight=1.0)))


def _eval_set(relevant):
    splits = np.cumsum([0] + [len(r) for r in relevant])
    rows = [r for rs in relevant for r in rs]
    return types.SimpleNamespace(relevant_splits=splits, relevant_rows=np.array(rows),
                                 relevant_gains=np.ones(len(rows)))


def test_choice_takes_the_encoder_list_only_where_it_scores_higher():
    served = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    eval_set = _eval_set([[9], [5]])          # the served lists miss item 9
    finds = encoder_choice.choose_encoder_fusion(served, np.array([[9, 1], [5, 0]]), eval_set,
                                                 4, ("recall@4",))
    assert finds.config.enabled and finds.score == 1.0
    useless = encoder_choice.choose_encoder_fusion(served, np.array([[0, 10], [11, 12]]),
                                                   eval_set, 4, ("recall@4",))
    assert useless.config == EncoderFusionConfig() and useless.score == 0.5
    assert len(useless.candidates) == len(encoder_choice.CANDIDATES)
    assert "<- chosen" in useless.table().splitlines()[1]    # the first row: no encoder list


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_export_chooses_the_weight_on_validation_and_refuses_a_build_without_a_list(
        build, tiny_flat_index):
    base = str(build.work / "cli")
    proc = _cli("export", f"--model_dir={build.model_dir}", f"--index_dir={build.index_dir}",
                f"--layout_dir={build.layout}", f"--export_base={base}", "--spelling=off",
                "--dense_feedback=off")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = json.loads(proc.stdout.strip().splitlines()[-1])["servables"][0]
    with open(os.path.join(path, "assets.extra", "dpsr_servable.json")) as f:
        info = json.load(f)
    choice = info["fusion_choice"]["encoder_list"]
    assert choice["split"] == "validation"
    assert [c["encoder_fusion"] for c in choice["candidates"]] == [
        c.to_json() for c in encoder_choice.CANDIDATES]
    best = max(choice["candidates"], key=lambda c: c["score"])    # the first best on a tie
    assert choice["encoder_fusion"] == best["encoder_fusion"]
    chosen = EncoderFusionConfig.from_json(best["encoder_fusion"])
    assert info["servable"]["encoder_fusion"] == json.loads(chosen.to_json())
    assert ("encoder_list" in info["stages"]) == chosen.enabled
    assert f"encoder list chosen on the validation split: {chosen.describe()}" in proc.stdout
    refused = _cli("export", f"--model_dir={build.model_dir}", f"--index_dir={tiny_flat_index}",
                   f"--export_base={base}_none", "--encoder_weight=0.5")
    assert refused.returncode != 0
    assert "--encoder_weight=0.5 needs an encoder list in" in refused.stderr
    assert not os.path.exists(base + "_none")
    for weight in ("-0.5", "nan"):  # NaN once passed both tests and meant "choose on validation"
        refused = _cli("export", f"--model_dir={build.model_dir}",
                       f"--index_dir={build.index_dir}", f"--export_base={base}_bad",
                       f"--encoder_weight={weight}")
        assert refused.returncode != 0
        assert "--encoder_weight must be -1 (chosen on validation) or >= 0" in refused.stderr
        assert not os.path.exists(base + "_bad")
