"""rewriter_config.json goes through dpsr_tf/config_json.py: a file written before that reads as
it did, unknown or misshapen fields are a ValueError naming the file and the field."""
import json
import os

import pytest

from dpsr_tf.rewriting import units
from dpsr_tf.rewriting.config import RewriterConfig
from dpsr_tf.rewriting.train import CONFIG_JSON, UNITS_TXT, load_rewriter

# rewriter_config.json as `dpsr train-rewriter` wrote it before (json.dump of the dataclass,
# indent 2, sorted keys), for a 9-unit vocabulary.
OLD_FILE = """{
  "config": {
    "backward_weight": 1.0,
    "batch_size": 16,
    "d_model": 16,
    "dropout": 0.0,
    "ff_dim": 16,
    "forward_weight": 1.0,
    "learning_rate": 0.001,
    "num_heads": 2,
    "num_layers": 1,
    "q2q_weight": 0.5,
    "query_len": 6,
    "seed": 0,
    "title_len": 8,
    "train_steps": 30,
    "vocab_size": 9,
    "warmup_steps": 5
  },
  "holdout_percent": 0,
  "layout_dir": "/data/layout",
  "train_pairs": 120
}"""

OLD_CONFIG = RewriterConfig(num_layers=1, d_model=16, num_heads=2, ff_dim=16, vocab_size=9,
                            query_len=6, title_len=8, dropout=0.0, batch_size=16,
                            train_steps=30, warmup_steps=5)


def _model_dir(tmp_path, config_text: str) -> str:
    model_dir = tmp_path / "rw"
    model_dir.mkdir()
    units.UnitVocab.build(["Cordless Drill", "drill bit", "手机 drill"], 10, min_count=1).save(
        str(model_dir / UNITS_TXT))  # 9 units
    (model_dir / CONFIG_JSON).write_text(config_text, encoding="utf-8")
    return str(model_dir)


def test_a_file_written_before_reads_as_before(tmp_path):
    cfg, vocab, extra = load_rewriter(_model_dir(tmp_path, OLD_FILE))
    assert cfg == OLD_CONFIG and len(vocab) == 9
    assert extra == {"holdout_percent": 0, "layout_dir": "/data/layout", "train_pairs": 120}


def test_the_written_form_is_the_old_form():
    old_section = json.loads(OLD_FILE)["config"]
    assert OLD_CONFIG.to_dict() == old_section
    assert OLD_CONFIG.to_json() == json.dumps(old_section, indent=2, sort_keys=True)
    assert RewriterConfig.from_json(OLD_CONFIG.to_json()) == OLD_CONFIG


def test_a_field_left_out_takes_its_default(tmp_path):
    text = OLD_FILE.replace('    "seed": 0,\n', "")
    cfg, _, _ = load_rewriter(_model_dir(tmp_path, text))
    assert cfg == OLD_CONFIG


@pytest.mark.parametrize("text,match", [
    (OLD_FILE.replace('"seed": 0', '"sede": 0'),
     r"RewriterConfig \(field 'config'\): unknown field 'sede'"),
    ('{"config": [], "layout_dir": "/data/layout"}',
     r"RewriterConfig \(field 'config'\) must be a JSON object, got list"),
    ('{"layout_dir": "/data/layout"}', "expected an object with a 'config' section"),
    ("{not json", "not JSON"),
], ids=["unknown", "list", "no-config", "not-json"])
def test_a_bad_file_is_a_value_error_naming_it(tmp_path, text, match):
    model_dir = _model_dir(tmp_path, text)
    with pytest.raises(ValueError, match=match) as raised:
        load_rewriter(model_dir)
    assert os.path.join(model_dir, CONFIG_JSON) in str(raised.value)
