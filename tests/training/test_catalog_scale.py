"""The defaults that grow with the catalog (dpsr_tf/training/catalog_scale.py): widths and the
pseudo-query schedule on hand-worked catalogs, and what a real run writes into its config."""
import dataclasses
import json
import os

import pytest

from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_dir import CONFIG_FILE
from dpsr_tf.training import catalog_scale, driver
from dpsr_tf.training.config import TrainConfig

HOME_DEPOT_ITEMS = 54667


def _train(**kw):
    return TrainConfig(layout_dir="L", model_dir="M", **kw)


@pytest.mark.parametrize("num_items", [437, 1682, 10000, 29999])
def test_small_catalogs_keep_every_default(num_items):
    model, changes = catalog_scale.scaled_model_config(ModelConfig(), num_items)
    assert model == ModelConfig() and changes == {}
    train = _train().resolved(num_items)
    assert catalog_scale.scaled_train_config(train, num_items) == train
    assert catalog_scale.describe(num_items, {}, train) == ""


def test_large_catalog_doubles_the_default_widths():
    model, changes = catalog_scale.scaled_model_config(ModelConfig(), 30000)
    # Home Depot's wide towers (docs/results.md): token table 128, hidden 512, adapters 256,
    # d = 128; the per-head projection and the feature tables keep their widths.
    assert changes == {"embedding_dim": 128, "token_embedding_dim": 128,
                       "item_hidden_units": (512,), "query_hidden_units": (512,),
                       "adapter_hidden_units": (256,)}
    assert (model.embedding_dim, model.token_embedding_dim, model.item_hidden_units,
            model.query_hidden_units, model.adapter_hidden_units) == (128, 128, (512,), (512,),
                                                                      (256,))
    assert model.query_projection_dim == ModelConfig().query_projection_dim == 128
    assert model.feature_embedding_dim == ModelConfig().feature_embedding_dim


def test_widths_set_by_hand_are_kept():
    mine = ModelConfig(token_embedding_dim=96, item_hidden_units=(300, 200))
    model, changes = catalog_scale.scaled_model_config(mine, HOME_DEPOT_ITEMS)
    assert model.token_embedding_dim == 96 and model.item_hidden_units == (300, 200)
    assert set(changes) == {"embedding_dim", "query_hidden_units", "adapter_hidden_units"}


@pytest.mark.parametrize("config", [ModelConfig(model="dssm"), ModelConfig(tower="searchgcn")])
def test_baselines_and_searchgcn_keep_their_settings(config):
    assert not catalog_scale.applies(config, HOME_DEPOT_ITEMS)
    assert catalog_scale.applies(ModelConfig(), HOME_DEPOT_ITEMS)
    assert catalog_scale.scaled_model_config(config, HOME_DEPOT_ITEMS) == (config, {})


def test_large_catalog_share_falls_over_a_quarter_of_the_budget():
    # Home Depot: the early-stopping cap is 300 * 54,667 / 256 = 64,063 -> 64,000 steps, so the
    # share falls from the automatic share to 0.5 over 16,000 steps (the measured schedule).
    train = catalog_scale.scaled_train_config(_train().resolved(HOME_DEPOT_ITEMS),
                                              HOME_DEPOT_ITEMS)
    assert train.max_train_steps == 64000
    assert (train.pseudo_query_final_ratio, train.pseudo_query_decay_steps,
            train.early_stopping_min_steps) == (0.5, 16000, 16000)
    mix = train.pseudo_query_mix(45132)
    assert mix.ratio == pytest.approx(1 - 30 * 45132 / (256 * 64000))      # 0.917
    assert float(mix.at_step(8000)) == pytest.approx((mix.ratio + 0.5) / 2)
    assert float(mix.at_step(40000)) == pytest.approx(0.5)
    # Two training replicas count local steps: half as many each.
    two = catalog_scale.scaled_train_config(_train().resolved(HOME_DEPOT_ITEMS),
                                            HOME_DEPOT_ITEMS, num_replicas=2)
    assert (two.pseudo_query_decay_steps, two.early_stopping_min_steps) == (8000, 16000)
    # A fixed length: a quarter of it.
    fixed = catalog_scale.scaled_train_config(_train(train_steps=10000), HOME_DEPOT_ITEMS)
    assert fixed.pseudo_query_decay_steps == 2500
    line = catalog_scale.describe(HOME_DEPOT_ITEMS, {"embedding_dim": 128}, train)
    assert "54,667 items" in line and "falling to 0.5 over 16,000 steps" in line
    assert "no early stop before step 16,000" in line
    # A minimum set by hand is kept.
    mine = catalog_scale.scaled_train_config(
        _train(early_stopping_min_steps=30000).resolved(HOME_DEPOT_ITEMS), HOME_DEPOT_ITEMS)
    assert mine.early_stopping_min_steps == 30000


@pytest.mark.parametrize("kw", [dict(pseudo_query_ratio=0.8),
                                dict(pseudo_query_final_ratio=0.3),
                                dict(pseudo_query_final_ratio=0.3, pseudo_query_decay_steps=100),
                                dict(pseudo_query_decay_steps=100)])
def test_a_share_or_schedule_set_by_hand_is_kept(kw):
    train = _train(**kw).resolved(HOME_DEPOT_ITEMS)
    assert catalog_scale.scaled_train_config(train, HOME_DEPOT_ITEMS) == train


def _tiny_run(layout, model_dir, steps, **kw):
    """A few steps on the tiny layout, cheap threads (2 cores are shared)."""
    return TrainConfig(layout_dir=layout.layout_dir, model_dir=model_dir, batch_size=16,
                       train_steps=steps, log_step_count_steps=1000,
                       save_checkpoints_steps=kw.pop("save_checkpoints_steps", steps),
                       intra_op_threads=1, inter_op_threads=2, shuffle_buffer=1000,
                       eval_random_negatives=50, eval_batch_size=64, throttle_secs=1, **kw)


@pytest.mark.parametrize("scaling", [True, False])
def test_a_run_writes_the_scaled_config(tiny_layout, tmp_path, monkeypatch, scaling):
    """The driver scales by the layout's own item count (the threshold lowered to the tiny
    catalog's) and writes what it trained into dpsr_config.json; --nocatalog_scaling does not."""
    monkeypatch.setattr(catalog_scale, "LARGE_CATALOG_ITEMS", tiny_layout.num_items)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model_dir = str(tmp_path / "model")
    train = _tiny_run(tiny_layout, model_dir, 8, catalog_scaling=scaling)
    driver.train_and_evaluate(ModelConfig(num_negatives=8), train)
    with open(os.path.join(model_dir, CONFIG_FILE), encoding="utf-8") as f:
        written = json.load(f)
    model = written["model"]
    widths = (model["embedding_dim"], model["token_embedding_dim"],
              list(model["item_hidden_units"]))
    schedule = (written["train"]["pseudo_query_final_ratio"],
                written["train"]["pseudo_query_decay_steps"])
    if scaling:
        assert widths == (128, 128, [512]) and schedule == (0.5, 2)
        assert written["train"]["early_stopping_min_steps"] == 2
    else:
        assert widths == (64, 64, [256]) and schedule == (-1.0, 0)
        assert written["train"]["early_stopping_min_steps"] == 0


def test_a_resumed_run_goes_on_with_the_schedule(tiny_layout, tmp_path, monkeypatch):
    """A run resumed from a checkpoint hands its step to the training input, so the
    pseudo-query share goes on from there instead of starting its fall again."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    starts = []
    real = driver.default_input_fns

    def spy(*args, **kwargs):
        starts.append(kwargs.get("start_step", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "default_input_fns", spy)
    model_dir = str(tmp_path / "model")
    small = ModelConfig(embedding_dim=16, token_embedding_dim=16, feature_embedding_dim=4,
                        item_hidden_units=(32,), query_hidden_units=(32,),
                        query_projection_dim=16, num_negatives=8)

    def run(steps):
        driver.train_and_evaluate(small, _tiny_run(
            tiny_layout, model_dir, steps, pseudo_query_ratio=0.9, pseudo_query_final_ratio=0.1,
            pseudo_query_decay_steps=20, save_checkpoints_steps=6))

    run(6)
    run(10)
    assert starts == [0, 6]


def test_a_directory_with_the_narrow_towers_names_the_switch(tiny_layout, tmp_path, monkeypatch):
    """A model directory trained before the large-catalog defaults (narrow towers) resumed
    with them: the config mismatch says which flag keeps the old widths."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model_dir = str(tmp_path / "model")
    narrow = _tiny_run(tiny_layout, model_dir, 2, catalog_scaling=False)
    driver.train_and_evaluate(ModelConfig(num_negatives=8), narrow)
    monkeypatch.setattr(catalog_scale, "LARGE_CATALOG_ITEMS", tiny_layout.num_items)
    with pytest.raises(ValueError, match=r"embedding_dim.*--nocatalog_scaling"):
        driver.train_and_evaluate(ModelConfig(num_negatives=8),
                                  dataclasses.replace(narrow, catalog_scaling=True))
