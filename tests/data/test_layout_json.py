"""layout.json: one JSON form of the LayoutSpec, written and read by one function pair, and the
layouts written before that form still read as they did."""
import dataclasses
import json
import os
import shutil

import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.tokenization import TokenizerConfig

# A layout.json as `dpsr prepare` wrote it before the LayoutSpec had one JSON form: no
# layout_dir, the vocabulary relative to the layout, num_logged_queries and prepare_config beside
# the spec's fields, no record_checks; the item features in column order, not sorted.
_OLD_LAYOUT_JSON = """{
  "format_version": 1,
  "tokenizer_config": {"word_unigrams": true, "word_bigrams": true, "letter_trigrams": false,
                       "cjk_unigrams": true, "cjk_bigrams": true, "num_buckets": 4096,
                       "num_oov_buckets": 16, "max_tokens": 64, "max_input_bytes": 16384,
                       "max_word_chars": 32, "vocab_file": "vocab.txt"},
  "token_id_space": 4112,
  "num_items": 3,
  "num_users": 2,
  "num_queries": 4,
  "num_logged_queries": 3,
  "item_features": {"category": 4, "brand": 3},
  "user_features": {"segment": 2},
  "history_length": 5,
  "counts": {"labels": {"click": 5}},
  "split": {"rule": "md5(query) % 2 == 0", "method": "query_hash"},
  "eval_min_gain": 1,
  "record_files": {"train": ["interactions/train-00000-of-00001.rec"],
                   "eval": ["interactions/eval-00000-of-00001.rec"]},
  "num_records": {"train": 4, "eval": 1},
  "prepare_config": {"output": "/somewhere/else", "history_length": 5}
}
"""


def _write_old_layout(directory: str) -> str:
    os.makedirs(directory)
    with open(os.path.join(directory, layout_lib.LAYOUT_JSON), "w", encoding="utf-8") as f:
        f.write(_OLD_LAYOUT_JSON)
    return directory


def _expected_old_spec(layout_dir: str) -> layout_lib.LayoutSpec:
    return layout_lib.LayoutSpec(
        layout_dir=layout_dir,
        tokenizer_config=TokenizerConfig(letter_trigrams=False, num_buckets=4096,
                                         num_oov_buckets=16, max_tokens=64,
                                         vocab_file=os.path.join(layout_dir, "vocab.txt")),
        token_id_space=4112, num_items=3, num_users=2, num_queries=4,
        item_features={"category": 4, "brand": 3}, user_features={"segment": 2},
        history_length=5, counts={"labels": {"click": 5}},
        split={"rule": "md5(query) % 2 == 0", "method": "query_hash"}, eval_min_gain=1.0,
        record_files={"train": ["interactions/train-00000-of-00001.rec"],
                      "eval": ["interactions/eval-00000-of-00001.rec"]},
        num_records={"train": 4, "eval": 1}, format_version=1, record_checks={},
        num_logged_queries=3,
        prepare_config={"output": "/somewhere/else", "history_length": 5})


def test_a_layout_json_written_before_the_one_form_reads_as_before(tmp_path):
    layout_dir = _write_old_layout(str(tmp_path / "old"))
    spec = layout_lib.load_layout_spec(layout_dir)
    assert spec == _expected_old_spec(layout_dir)
    assert isinstance(spec.eval_min_gain, float)
    # The columns of items/features.npy follow the file's order, not a sorted one.
    assert list(spec.item_features) == ["category", "brand"]
    assert layout_lib.feature_columns(spec, "item") == ["category", "brand"]


def test_the_form_round_trips_and_the_file_is_written_in_it(tmp_path):
    layout_dir = str(tmp_path / "layout")
    spec = _expected_old_spec(layout_dir)
    os.makedirs(layout_dir)
    path = layout_lib.write_layout_spec(spec)
    assert path == os.path.join(layout_dir, layout_lib.LAYOUT_JSON)
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == layout_lib.layout_spec_to_dict(spec)
    assert on_disk["layout_dir"] == layout_dir
    assert on_disk["tokenizer_config"]["vocab_file"] == "vocab.txt"   # relative to the layout
    assert list(on_disk["item_features"]) == ["category", "brand"]
    assert layout_lib.load_layout_spec(layout_dir) == spec
    assert layout_lib.layout_spec_from_dict(on_disk) == spec


def test_a_copied_layout_reads_as_itself(tmp_path):
    # The recorded layout_dir names where the layout was written; a copy is where it is now.
    spec = _expected_old_spec(str(tmp_path / "layout"))
    os.makedirs(spec.layout_dir)
    layout_lib.write_layout_spec(spec)
    copy = str(tmp_path / "copy")
    shutil.copytree(spec.layout_dir, copy)
    got = layout_lib.load_layout_spec(copy)
    assert got.layout_dir == copy
    assert got.tokenizer_config.vocab_file == os.path.join(copy, "vocab.txt")
    assert dataclasses.replace(got, layout_dir=spec.layout_dir,
                               tokenizer_config=spec.tokenizer_config) == spec


def test_a_vocabulary_outside_the_layout_stays_absolute(tmp_path):
    spec = _expected_old_spec(str(tmp_path / "layout"))
    outside = str(tmp_path / "shared" / "vocab.txt")
    spec = dataclasses.replace(spec, tokenizer_config=dataclasses.replace(
        spec.tokenizer_config, vocab_file=outside))
    data = layout_lib.layout_spec_to_dict(spec)
    assert data["tokenizer_config"]["vocab_file"] == outside
    assert layout_lib.layout_spec_from_dict(data) == spec


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(num_itmes=3), r"layout.json: LayoutSpec: unknown field 'num_itmes'"),
    (lambda d: d.pop("num_items"), r"layout.json: LayoutSpec: missing required field 'num_items'"),
    (lambda d: d.update(format_version=2), r"layout format_version 2, this code reads 1"),
])
def test_a_damaged_layout_json_names_the_file_and_the_field(tmp_path, edit, message):
    layout_dir = _write_old_layout(str(tmp_path / "old"))
    path = os.path.join(layout_dir, layout_lib.LAYOUT_JSON)
    data = json.loads(_OLD_LAYOUT_JSON)
    edit(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=message):
        layout_lib.load_layout_spec(layout_dir)
