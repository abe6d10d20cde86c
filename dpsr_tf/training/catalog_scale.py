"""Defaults that grow with the catalog (TrainConfig.catalog_scaling; docs/training.md,
"Large catalogs").

On a catalog of LARGE_CATALOG_ITEMS items or more, `dpsr train` (the driver, which knows the
layout's item count) trains:
  - towers twice as wide: every width in WIDTH_FIELDS still at its ModelConfig default is
    doubled (a width set by hand is kept);
  - a falling pseudo-query share: when the share is automatic and no schedule was set, it
    falls linearly from the automatic share to LARGE_FINAL_RATIO over a quarter of the step
    budget, then stays there; early stopping neither stops nor picks its best before the
    fall ends (TrainConfig.early_stopping_min_steps).

Why (docs/results.md, "Home Depot: the defaults that scale with the catalog"): a large
catalog's vocabulary needs the width, and its logged queries are learned best after the
pseudo-queries have taught the vocabulary. Smaller catalogs (the synthetic one, MovieLens,
Best Buy) are below the threshold and keep the unscaled defaults and time budget.
"""
import dataclasses
from typing import Dict, Tuple

LARGE_CATALOG_ITEMS = 30000
WIDTH_FIELDS = ("embedding_dim", "token_embedding_dim", "item_hidden_units",
                "query_hidden_units", "adapter_hidden_units")
WIDTH_FACTOR = 2
LARGE_FINAL_RATIO = 0.5
DECAY_SHARE_OF_BUDGET = 0.25


def is_large(num_items: int) -> bool:
    """True for a catalog the large-catalog defaults apply to."""
    return num_items >= LARGE_CATALOG_ITEMS


def applies(model_config, num_items: int) -> bool:
    """True where the large-catalog defaults change a run: a large catalog and the DPSR towers
    (model "dpsr", tower "dpsr"). The DSSM baseline keeps its paper's settings and SearchGCN
    its own (neither widths nor schedule change)."""
    return (is_large(num_items) and model_config.model == "dpsr"
            and model_config.tower == "dpsr")


def _scaled(value):
    if isinstance(value, tuple):
        return tuple(int(v) * WIDTH_FACTOR for v in value)
    return int(value) * WIDTH_FACTOR


def scaled_model_config(model_config, num_items: int) -> Tuple[object, Dict[str, object]]:
    """(model_config with the widths of a large catalog, {field: new width} changed); unchanged
    where the defaults do not apply (`applies`)."""
    if not applies(model_config, num_items):
        return model_config, {}
    defaults = type(model_config)()
    # A query encoder of a teacher's list has the teacher's width, whatever the catalog.
    fields = [f for f in WIDTH_FIELDS
              if not (f == "embedding_dim" and getattr(model_config, "item_side", "") == "teacher")]
    changes = {field: _scaled(getattr(model_config, field)) for field in fields
               if getattr(model_config, field) == getattr(defaults, field)}
    if not changes:
        return model_config, {}
    return dataclasses.replace(model_config, **changes), changes


def scaled_train_config(train, num_items: int, num_replicas: int = 1):
    """train with the falling pseudo-query share of a large catalog, where the share is
    automatic and no schedule was set (pseudo_query_final_ratio < 0, decay_steps 0). The
    caller checks `applies` for the run's model first.

    The schedule counts each replica's local steps: a quarter of the step budget (global steps,
    train.step_budget; resolve the early-stopping cap first) over num_replicas."""
    if (not is_large(num_items) or train.pseudo_query_ratio >= 0
            or train.pseudo_query_final_ratio >= 0 or train.pseudo_query_decay_steps):
        return train
    replicas = max(1, num_replicas)
    decay = max(1, int(round(train.step_budget / float(replicas) * DECAY_SHARE_OF_BUDGET)))
    # Validation while the share still falls scores a model of a mix the run is not for, and
    # runs that stopped mid-fall served worse (docs/results.md, "Home Depot: the defaults that
    # scale with the catalog"): no stop and no best before the fall ends.
    return dataclasses.replace(train, pseudo_query_final_ratio=LARGE_FINAL_RATIO,
                               pseudo_query_decay_steps=decay,
                               early_stopping_min_steps=train.early_stopping_min_steps or
                               decay * replicas)


def describe(num_items: int, changes: Dict[str, object], train) -> str:
    """One log line: what the large-catalog defaults changed (or why nothing)."""
    if not is_large(num_items):
        return ""
    parts = [f"{field}={value}" for field, value in changes.items()]
    if train.pseudo_query_decay_steps and train.pseudo_query_final_ratio >= 0:
        parts.append(f"pseudo-query share falling to {train.pseudo_query_final_ratio:g} over "
                     f"{train.pseudo_query_decay_steps:,} steps")
    if train.early_stopping_min_steps:
        parts.append(f"no early stop before step {train.early_stopping_min_steps:,}")
    what = ", ".join(parts) if parts else "nothing (every width and the schedule set by hand)"
    return (f"large catalog ({num_items:,} items >= {LARGE_CATALOG_ITEMS:,}): {what} "
            f"(--nocatalog_scaling keeps the small-catalog defaults)")
