"""A DPSR model with a pretrained text encoder, end to end on the tiny catalog: `dpsr train`
starts the encoder from the pretrained weights (the Scaffold's init), `dpsr index` embeds the
titles, `dpsr export` serves the same encoder in-graph (WordPiece op included).

With learning rates too small to move any weight, one training step leaves the model at the
zero-shot encoder: the servable's query embeddings must then equal sentence-transformers' own
(testdata/minilm_golden.npz, tools/make_encoder_golden.py), which checks the weights reached the
checkpoint, the tower wiring (one head, no user features: the text embedding itself) and the
servable's tokenization together.
"""
import os

import numpy as np
import pytest

from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig
from tests.support import tiny_model
from tests.support.tf1_servable import Tf1Servable

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata",
                      "minilm_golden.npz")


@pytest.fixture(scope="module")
def still_model(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("pretrained"))
    spec = tiny_model.prepare_tiny_layout(work)
    config = ModelConfig(num_heads=1, embedding_dim=384, text_encoder="pretrained",
                         pretrained_trainable_layers=1, pretrained_learning_rate=1e-12,
                         learning_rate=1e-12, num_negatives=8)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=os.path.join(work, "model"),
                        batch_size=8, train_steps=1, save_checkpoints_steps=1,
                        eval_random_negatives=8, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(config, train)
    return {"work": work, "spec": spec, "model_dir": train.model_dir}


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN, allow_pickle=True)
    keep = slice(0, 8)   # short English texts
    return list(data["texts"][keep]), data["embeddings"][keep]


def test_config_needs_the_encoders_width(tmp_path):
    spec = tiny_model.prepare_tiny_layout(str(tmp_path))
    config = ModelConfig(embedding_dim=64, text_encoder="pretrained")
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(tmp_path / "m"),
                        batch_size=8, train_steps=1, seed=0)
    with pytest.raises(ValueError, match="needs embedding_dim = the encoder's hidden size 384"):
        driver.train_and_evaluate(config, train)


def test_one_still_step_is_the_zero_shot_encoder_in_the_checkpoint(still_model, golden):
    texts, expected = golden
    cfg, spec = model_dir_lib.load_model_config(still_model["model_dir"])
    assert cfg.text_encoder == "pretrained"
    with CheckpointEmbedder(still_model["model_dir"]) as embedder:
        heads = embedder.embed_queries(np.zeros([0], np.int64), np.zeros(len(texts) + 1, np.int64),
                                       texts=texts)
        with pytest.raises(ValueError, match="needs the query texts"):
            embedder.embed_queries(np.zeros([0], np.int64), np.zeros(2, np.int64))
    np.testing.assert_allclose(heads[:, 0, :], expected, rtol=0, atol=2e-4)


def test_index_and_servable_answer_with_the_encoder(still_model, golden):
    texts, expected = golden
    index_dir = os.path.join(still_model["work"], "index")
    catalog_index.index_catalog(still_model["model_dir"], index_dir,
                                IndexBuildConfig(factory="Flat"))
    path = export_servable(still_model["model_dir"], index_dir,
                           os.path.join(still_model["work"], "servable"),
                           servable=ServableConfig(default_k=5, max_k=50, hybrid=False))
    servable = Tf1Servable(path)
    out = servable.call("query_embedding", {"query": texts}, ["embedding"])
    np.testing.assert_allclose(out["embedding"][:, 0, :], expected, rtol=0, atol=2e-4)
    # The served list is the exact inner-product ranking of the indexed item embeddings.
    items, ids = catalog_index.embed_catalog(still_model["model_dir"])
    answer = servable.call("serving_default", {"query": texts[:3], "k": 5},
                           ["item_ids", "scores"])
    for row in range(3):
        scores = items @ out["embedding"][row, 0]
        best = np.argsort(-scores, kind="stable")[:5]
        np.testing.assert_allclose(answer["scores"][row], scores[best], atol=1e-4)
        assert [i.decode() for i in answer["item_ids"][row]] == [ids[b] for b in best]


def _titles_only_model(work) -> str:
    """Titles only (no item features), one head, no users, the top encoder layer trained two
    steps at a learning rate that moves it; returns the model directory."""
    from dpsr_tf.data.prepare import PrepareConfig, prepare  # pylint: disable=import-outside-toplevel
    from dpsr_tf.tokenization import TokenizerConfig  # pylint: disable=import-outside-toplevel
    paths = tiny_model.write_tiny_dataset(str(work / "tsv"))
    with open(paths["items"], encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t")[:2] for line in f]
    with open(paths["items"], "w", encoding="utf-8") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)
    spec = prepare(PrepareConfig(items=paths["items"], interactions=paths["interactions"],
                                 output=str(work / "layout"),
                                 tokenizer=TokenizerConfig(num_buckets=4096, num_oov_buckets=1),
                                 seed=0), log=lambda _: None)
    assert not spec.item_features
    config = ModelConfig(num_heads=1, embedding_dim=384, text_encoder="pretrained",
                         pretrained_trainable_layers=1, pretrained_learning_rate=1e-3,
                         num_negatives=8)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(work / "model"),
                        batch_size=8, train_steps=2, save_checkpoints_steps=2,
                        eval_random_negatives=8, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(config, train)
    return train.model_dir


@pytest.fixture(scope="module")
def titles_only_model(tmp_path_factory):
    return _titles_only_model(tmp_path_factory.mktemp("titles_only"))


def test_an_encoder_without_adapters_trains_only_its_top_layers(titles_only_model):
    """Titles only (no item features), one head, no users: the towers have no variables of
    their own, so the encoder's Adam step alone trains, and counts the global step. Only the
    top --pretrained_trainable_layers move; the rest keep the pretrained weights."""
    from dpsr_tf.model.pretrained import files  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    reader = tf.train.load_checkpoint(titles_only_model)
    assert reader.get_tensor("global_step") == 2
    assert not [n for n in reader.get_variable_to_shape_map()
                if n.startswith("dpsr/") and "pretrained_encoder" not in n
                and "Adam" not in n and "frequency" not in n.lower()], "towers have variables"
    pretrained = files.read_pretrained(files.default_pretrained_dir()).weights
    prefix = "dpsr/pretrained_encoder/"
    for name, moved in (("encoder.layer.5.output.dense.weight", True),
                        ("encoder.layer.0.output.dense.weight", False),
                        ("embeddings.word_embeddings.weight", False)):
        now = reader.get_tensor(prefix + name.replace(".", "/"))
        assert (not np.allclose(now, pretrained[name], atol=1e-7)) == moved, name


def test_early_stopping_on_recall_bounds_the_logged_in_batch_evaluation(tmp_path):
    """Stopping on a full-corpus recall, the Estimator's in-batch evaluation through the
    encoder only logs: without --eval_steps it runs 8 batches (recorded in dpsr_config.json),
    and the stopping metric is still the recall over the whole validation split."""
    from dpsr_tf.evaluation import checkpoint_recall  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training import early_stopping  # pylint: disable=import-outside-toplevel
    spec = tiny_model.prepare_tiny_layout(str(tmp_path))
    config = ModelConfig(num_heads=1, embedding_dim=384, text_encoder="pretrained",
                         pretrained_trainable_layers=1, num_negatives=8)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(tmp_path / "model"),
                        batch_size=8, max_train_steps=1, eval_every_steps=1,
                        save_checkpoints_steps=1, early_stopping_metric="recall@10",
                        eval_random_negatives=8, eval_batch_size=8, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(config, train,
                              checkpoint_metrics=checkpoint_recall.for_training(train))
    recorded = model_dir_lib.read_config_file(train.model_dir)
    assert recorded["train"]["eval_steps"] == early_stopping.PRETRAINED_LOGGED_EVAL_STEPS == 8
    history = early_stopping.load_history(train.model_dir)["history"]
    assert [h["global_step"] for h in history] == [1]
    assert 0.0 <= history[0]["recall@10"] <= 1.0


def test_the_fine_tuned_encoder_written_out_embeds_as_the_model_does(titles_only_model,
                                                                     tmp_path, golden):
    """write_encoder_dir: the Hugging Face directory of the fine-tuned weights, read by the
    same loader as any encoder, embeds texts as the model's own query tower does (and no
    longer as the encoder it started from)."""
    from dpsr_tf.model.pretrained import fine_tuned  # pylint: disable=import-outside-toplevel
    from dpsr_tf.model.pretrained.text_embedder import TextEmbedder  # pylint: disable=import-outside-toplevel
    texts, zero_shot = golden
    out = fine_tuned.write_encoder_dir(titles_only_model, str(tmp_path / "ft"))
    assert fine_tuned.is_model_dir(titles_only_model) and not fine_tuned.is_model_dir(out)
    with CheckpointEmbedder(titles_only_model) as embedder:
        heads = embedder.embed_queries(np.zeros([0], np.int64),
                                       np.zeros(len(texts) + 1, np.int64), texts=texts)
    with TextEmbedder(out) as embedder:
        written = embedder.embed(texts)
    np.testing.assert_allclose(written, heads[:, 0, :], rtol=0, atol=1e-5)
    assert np.abs(written - zero_shot).max() > 1e-3, "the top layer should have moved"


def test_a_model_whose_towers_add_to_the_encoder_is_not_written(still_model, tmp_path):
    from dpsr_tf.model.pretrained import fine_tuned  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match="variables of their own"):
        fine_tuned.write_encoder_dir(still_model["model_dir"], str(tmp_path / "ft"))
    assert not os.path.exists(tmp_path / "ft")
