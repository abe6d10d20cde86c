"""TrainConfig: the auto pseudo-query ratio (hand-worked) and its validation."""
import pytest

from dpsr_tf.training.config import TrainConfig


def _config(**kwargs):
    return TrainConfig(layout_dir="layout", model_dir="model", **kwargs)


@pytest.mark.parametrize("records, batch, steps, want", [
    # 1 - 30 * R / (B * S), clipped to [0.5, 0.99]; 1 without a log.
    (660, 256, 8000, 0.99),                         # 1 - 19800 / 2048000 = 0.990 -> 0.99
    (10_000, 256, 10_000, 1 - 300_000 / 2_560_000),  # 0.8828125
    (45_132, 256, 10_000, 0.5),                     # 1 - 1353960 / 2560000 = 0.471 -> 0.5
    (139_638, 256, 10_000, 0.5),
    (0, 64, 100, 1.0),
])
def test_auto_pseudo_query_ratio(records, batch, steps, want):
    cfg = _config(batch_size=batch, train_steps=steps)
    assert cfg.auto_pseudo_query_ratio(records) == pytest.approx(want)
    assert cfg.pseudo_query_mix(records).ratio == pytest.approx(want)


def test_explicit_ratio_and_schedule_win_over_auto():
    mix = _config(pseudo_query_ratio=0.3, pseudo_query_final_ratio=0.1,
                  pseudo_query_decay_steps=50).pseudo_query_mix(10)
    assert (mix.ratio, mix.final_ratio, mix.decay_steps) == (0.3, 0.1, 50)


@pytest.mark.parametrize("field, value", [("pseudo_query_ratio", 1.5),
                                          ("pseudo_query_final_ratio", 2.0),
                                          ("pseudo_query_decay_steps", -1),
                                          ("max_log_epochs", 0.0)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        _config(**{field: value})


def test_auto_ratio_without_pseudo_queries_is_zero():
    # A layout prepared with --pseudo_queries_per_item=0 trains on its log alone under auto.
    assert _config().pseudo_query_mix(500, has_pseudo_queries=False).ratio == 0.0
    assert not _config().pseudo_query_mix(500, has_pseudo_queries=False).active
    assert _config(pseudo_query_ratio=0.4).pseudo_query_mix(500, False).ratio == 0.4


@pytest.mark.parametrize("num_items, batch, want", [
    # round(300 * N / B / 1000) * 1000, at least 16,000.
    (54_667, 256, 64_000),     # Home Depot: 64,063 -> 64,000 (the measured best budget)
    (10_000, 256, 16_000),     # the synthetic catalog: 11,719 -> 16,000 floor
    (1_000_000, 256, 1_172_000),
    (54_667, 64, 256_000),     # 256,251 -> 256,000: a smaller batch takes more steps
    (5, 256, 16_000),
])
def test_auto_train_steps(num_items, batch, want):
    cfg = _config(batch_size=batch)
    assert cfg.train_steps == 0                      # auto is the default
    assert cfg.auto_train_steps(num_items) == want
    assert cfg.resolved(num_items).max_train_steps == want      # the early-stopping cap
    assert cfg.resolved(num_items).train_steps == 0            # still early stopping
    assert cfg.resolved(num_items).step_budget == want
    assert _config(batch_size=batch, train_steps=123).resolved(num_items).train_steps == 123
    assert _config(batch_size=batch, train_steps=123).resolved(num_items).step_budget == 123


def test_auto_pseudo_query_ratio_needs_resolved_steps():
    with pytest.raises(ValueError, match="resolved"):
        _config().auto_pseudo_query_ratio(100)
    with pytest.raises(ValueError, match="train_steps"):
        _config(train_steps=-1)
