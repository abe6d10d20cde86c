"""ModelConfig validation and round trips; the resolved config in a model directory."""
import dataclasses
import json
import os

import pytest

from dpsr_tf.data.layout import LAYOUT_JSON, LayoutSpec
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_dir import CONFIG_FILE, load_model_config, write_resolved_config
from dpsr_tf.tokenization import TokenizerConfig


def test_defaults():
    # Measured defaults (docs/results.md); the paper's hinge setup stays one flag set away.
    cfg = ModelConfig()
    assert (cfg.optimizer, cfg.learning_rate, cfg.embedding_dim, cfg.loss, cfg.text_encoder,
            cfg.softmax_temperature, cfg.margin) == (
        "adagrad", 0.1, 64, "sampled_softmax", "shared", 0.05, 0.1)


@pytest.mark.parametrize("loss, alpha, num_negatives, softmax_random, needed", [
    ("hinge", 0.0, 64, 0, 0), ("hinge", 0.5, 64, 0, 64), ("hinge", 1.0, 10, 5, 10),
    ("sampled_softmax", 0.5, 64, 0, 0), ("sampled_softmax", 0.5, 64, 32, 32),
    ("sampled_softmax", 0.0, 64, 32, 0)])
def test_random_negatives_needed(loss, alpha, num_negatives, softmax_random, needed):
    # alpha weights ALL random negatives against ALL batch negatives (no subsampling), so the
    # input draws the loss's whole random set, or none when alpha = 0.
    cfg = ModelConfig(loss=loss, alpha=alpha, num_negatives=num_negatives,
                      softmax_random_negatives=softmax_random)
    assert cfg.random_negatives_needed == needed


@pytest.mark.parametrize("field, value", [
    ("num_heads", 0), ("alpha", 1.5), ("beta", -1.0), ("loss", "bpr"), ("combiner", "max"),
    ("personalization", "full"), ("item_hidden_units", (64, 0)), ("optimizer", "lamb"),
    ("partitioner", "round_robin"), ("softmax_temperature", 0.0), ("text_encoder", "tied"),
    ("max_human_negatives", -1), ("adapter_hidden_units", (0,))])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}="):
        ModelConfig(**{field: value})


def test_json_round_trip_and_unknown_fields():
    cfg = ModelConfig(num_heads=3, item_hidden_units=(128, 64), personalization="history")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="ModelConfig: unknown field .heads."):
        ModelConfig.from_dict({"num_heads": 2, "heads": 3})


def test_resolved_partitions():
    assert ModelConfig().resolved(num_ps=3).embedding_partitions == 3
    assert ModelConfig().resolved(num_ps=0).embedding_partitions == 1
    assert ModelConfig(embedding_partitions=5).resolved(num_ps=3).embedding_partitions == 5


def test_model_dir_config_round_trip_and_mismatch(tiny_layout, tmp_path):
    cfg = ModelConfig(num_heads=2)
    write_resolved_config(str(tmp_path), cfg, tiny_layout, extra={"train": {"steps": 1}})
    loaded, spec = load_model_config(str(tmp_path))
    assert loaded == cfg
    assert dataclasses.asdict(spec) == dataclasses.asdict(tiny_layout)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["train"] == {"steps": 1}
    write_resolved_config(str(tmp_path), cfg, tiny_layout)          # same model: fine
    with pytest.raises(ValueError, match=r"fields differ: \['num_heads'\]"):
        write_resolved_config(str(tmp_path), ModelConfig(num_heads=4), tiny_layout)


def test_missing_model_dir_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model_config(str(tmp_path))


def test_config_written_before_a_field_existed_keeps_its_graph(tiny_layout, tmp_path):
    # A model directory from before text_encoder / max_human_negatives existed was trained with
    # separate towers and no joined negatives: it loads as such (not as today's defaults), and
    # resuming it with those settings is no "different model".
    old = ModelConfig(text_encoder="separate", max_human_negatives=0, loss="hinge")
    write_resolved_config(str(tmp_path), old, tiny_layout)
    path = tmp_path / CONFIG_FILE
    data = json.loads(path.read_text())
    for key in ("text_encoder", "adapter_hidden_units", "max_human_negatives"):
        del data["model"][key]
    path.write_text(json.dumps(data))
    loaded, _ = load_model_config(str(tmp_path))
    assert loaded == old
    write_resolved_config(str(tmp_path), old, tiny_layout)
    with pytest.raises(ValueError, match=r"fields differ: \['max_human_negatives', "
                                         r"'text_encoder'\]"):
        write_resolved_config(str(tmp_path), dataclasses.replace(old, text_encoder="shared",
                                                                 max_human_negatives=8),
                              tiny_layout)


def test_the_model_dir_holds_the_layout_json_form(tiny_layout, tmp_path):
    write_resolved_config(str(tmp_path), ModelConfig(), tiny_layout)
    with open(os.path.join(tiny_layout.layout_dir, LAYOUT_JSON), encoding="utf-8") as f:
        layout_json = json.load(f)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["layout"] == layout_json
    _, spec = load_model_config(str(tmp_path))
    assert spec == tiny_layout


# A model directory's "layout" section as `dpsr train` wrote it before layout.json and it shared
# one form: sorted keys, absolute layout_dir and vocab_file, no num_logged_queries or
# prepare_config.
_OLD_MODEL_DIR_LAYOUT = """{
  "counts": {"labels": {"click": 5}},
  "eval_min_gain": 1.0,
  "format_version": 1,
  "history_length": 5,
  "item_features": {"brand": 3, "category": 4},
  "layout_dir": "/data/layout",
  "num_items": 3,
  "num_queries": 4,
  "num_records": {"eval": 1, "train": 4},
  "num_users": 2,
  "record_checks": {},
  "record_files": {"eval": ["interactions/eval-00000-of-00001.rec"],
                   "train": ["interactions/train-00000-of-00001.rec"]},
  "split": {"method": "query_hash", "rule": "md5(query) % 2 == 0"},
  "token_id_space": 4112,
  "tokenizer_config": {"cjk_bigrams": true, "cjk_unigrams": true, "letter_trigrams": false,
                       "max_input_bytes": 16384, "max_tokens": 64, "max_word_chars": 32,
                       "num_buckets": 4096, "num_oov_buckets": 16,
                       "vocab_file": "/data/layout/vocab.txt", "word_bigrams": true,
                       "word_unigrams": true},
  "user_features": {"segment": 2}
}"""


def test_a_model_dir_written_before_the_one_form_reads_as_before(tmp_path):
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps({"model": ModelConfig().to_dict(),
                                "layout": json.loads(_OLD_MODEL_DIR_LAYOUT)}))
    _, spec = load_model_config(str(tmp_path))
    assert spec == LayoutSpec(
        layout_dir="/data/layout",
        tokenizer_config=TokenizerConfig(letter_trigrams=False, num_buckets=4096,
                                         num_oov_buckets=16, max_tokens=64,
                                         vocab_file="/data/layout/vocab.txt"),
        token_id_space=4112, num_items=3, num_users=2, num_queries=4,
        item_features={"brand": 3, "category": 4}, user_features={"segment": 2},
        history_length=5, counts={"labels": {"click": 5}},
        split={"method": "query_hash", "rule": "md5(query) % 2 == 0"}, eval_min_gain=1.0,
        record_files={"eval": ["interactions/eval-00000-of-00001.rec"],
                      "train": ["interactions/train-00000-of-00001.rec"]},
        num_records={"eval": 1, "train": 4}, format_version=1, record_checks={},
        num_logged_queries=None, prepare_config={})
    # Written again, it takes the one form: the vocabulary relative to its layout.
    write_resolved_config(str(tmp_path / "again"), ModelConfig(), spec)
    again = json.loads((tmp_path / "again" / CONFIG_FILE).read_text())["layout"]
    assert again["tokenizer_config"]["vocab_file"] == "vocab.txt"
    assert load_model_config(str(tmp_path / "again"))[1] == spec
