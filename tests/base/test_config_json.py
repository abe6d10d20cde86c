"""One JSON rule for every dataclass config (dpsr_tf/config_json.py): round trips, and unknown,
missing or misshapen fields are a ValueError naming the file and the field."""
import json

import pytest

from dpsr_tf import config_json
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.indexing.index_layout import SHARDING_RULE, IndexManifest, ShardInfo
from dpsr_tf.indexing.lexical_manifest import LexicalManifest, LexicalShardInfo
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.ranking.model import RankerConfig
from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.training.config import TrainConfig

CONFIGS = [
    TokenizerConfig(num_buckets=77, letter_trigrams=False, vocab_file="v.txt"),
    ModelConfig(num_heads=3, item_hidden_units=(128, 64), personalization="history"),
    TrainConfig(layout_dir="/l", model_dir="/m", train_steps=7),
    RankerConfig(tokenizer=TokenizerConfig(num_buckets=5), hidden_units=(8, 4)),
    FusionConfig(dense_weight=0.5, lexical_weight=2.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_through_each_configs_own_methods(cfg):
    text = cfg.to_json()
    assert type(cfg).from_json(text) == cfg
    assert config_json.from_json(type(cfg), text) == cfg
    assert json.loads(text) == config_json.to_dict(cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_an_unknown_field_is_a_value_error_naming_it_and_the_file(cfg):
    body = {**config_json.to_dict(cfg), "no_such_field": 1}
    with pytest.raises(ValueError, match=r"^conf\.json: .*unknown field 'no_such_field'"):
        type(cfg).from_json(json.dumps(body), "conf.json")


def test_nested_fields_are_rebuilt_and_named_in_errors():
    cfg = RankerConfig(tokenizer=TokenizerConfig(num_buckets=5), hidden_units=(8, 4))
    back = RankerConfig.from_json(cfg.to_json())
    assert isinstance(back.tokenizer, TokenizerConfig) and back.hidden_units == (8, 4)
    body = config_json.to_dict(cfg)
    body["tokenizer"]["num_bucket"] = 3
    with pytest.raises(ValueError, match=r"r\.json: TokenizerConfig \(field 'tokenizer'\): "
                                         r"unknown field 'num_bucket'"):
        RankerConfig.from_json(json.dumps(body), "r.json")
    body = config_json.to_dict(cfg)
    body["hidden_units"] = {"a": 1}
    with pytest.raises(ValueError, match="field 'hidden_units' must be a list"):
        RankerConfig.from_json(json.dumps(body), "r.json")


def test_missing_required_field_and_not_json():
    with pytest.raises(ValueError, match=r"t\.json: TrainConfig: missing required field "
                                         r"'layout_dir'"):
        config_json.from_dict(TrainConfig, {"model_dir": "/m"}, "t.json")
    with pytest.raises(ValueError, match=r"t\.json: not JSON"):
        config_json.from_json(TrainConfig, "{", "t.json")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        config_json.from_json(TokenizerConfig, "[]", "t.json")


def test_index_manifest_with_a_lexical_section():
    lexical = LexicalManifest(features=("word_unigrams",), k1=1.2, b=0.7, max_tokens=64,
                              text="title", num_docs=3, avg_doc_length=2.0,
                              shards=(LexicalShardInfo(0, "lexical.idx", 3, 10, 100),))
    manifest = IndexManifest(factory="Flat", metric="inner_product", dimension=4, num_items=3,
                             num_shards=1, sharding_rule=SHARDING_RULE,
                             shards=(ShardInfo(0, "s0.faiss", "s0.ids", 3, 100),),
                             lexical=lexical)
    back = IndexManifest.from_json(manifest.to_json())
    assert back == manifest and isinstance(back.lexical.shards[0], LexicalShardInfo)
    body = json.loads(manifest.to_json())
    body["lexical"]["shards"][0]["extra"] = 1
    with pytest.raises(ValueError, match=r"m\.json: LexicalShardInfo \(field "
                                         r"'lexical\.shards\[0\]'\): unknown field 'extra'"):
        IndexManifest.from_json(json.dumps(body), "m.json")
