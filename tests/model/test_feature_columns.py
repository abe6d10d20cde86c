"""A model directory's LayoutSpec (dpsr_config.json, written with sorted keys) must read the
layout's feature columns by name, not by its own (sorted) order: regression test of items
embedded by `dpsr index` / `dpsr export` with swapped categorical columns."""
import json
import os

import numpy as np
import pytest

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.data.prepare import PrepareConfig, prepare
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_dir import load_model_config, write_resolved_config


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    work = tmp_path_factory.mktemp("columns")
    gen = synthetic.generate(synthetic.SyntheticConfig(num_items=300, num_users=40,
                                                       num_interactions=2000),
                             str(work / "catalog"), log=lambda _: None)
    return prepare(PrepareConfig(items=gen.items_path, users=gen.users_path,
                                 interactions=gen.interactions_path,
                                 output=str(work / "layout")), log=lambda _: None)


def test_model_dir_spec_reads_the_same_columns_as_the_layout(layout, tmp_path):
    on_disk = json.load(open(os.path.join(layout.layout_dir, layout_lib.LAYOUT_JSON)))
    # The synthetic catalog's columns are not in sorted order: the case that broke.
    assert list(on_disk["item_features"]) != sorted(on_disk["item_features"])
    write_resolved_config(str(tmp_path), ModelConfig(personalization="profile"), layout)
    _, saved = load_model_config(str(tmp_path))
    assert list(saved.item_features) == sorted(saved.item_features)
    for kind, load in (("item", layout_lib.load_item_table), ("user", layout_lib.load_user_table)):
        want, got = load(layout), load(saved)
        for name in getattr(layout, f"{kind}_features"):
            np.testing.assert_array_equal(got.feature(name), want.feature(name))
            # And the values are the right column: decoded values match the vocabulary.
            assert got.vocabularies[name] == want.vocabularies[name]
    assert layout_lib.feature_columns(saved, "item") == list(on_disk["item_features"])
