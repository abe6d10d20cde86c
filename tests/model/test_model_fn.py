"""model_fn: gradients reach both towers; a checkpoint restored into a fresh graph by the plain
tower functions reproduces the Estimator's embeddings exactly."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import pipeline
from dpsr_tf.evaluation.evaluate import request_inputs
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.model_dir import load_model_config, write_resolved_config
from dpsr_tf.model.model_fn import dpsr_model_fn
from tests.support.tiny_model import FakeCatalog, FakeLayoutSpec

SMALL = dict(embedding_dim=8, token_embedding_dim=8, feature_embedding_dim=4,
             history_embedding_dim=4, item_hidden_units=(16,), query_hidden_units=(16,),
             query_projection_dim=8, num_negatives=6, text_encoder="separate")


@pytest.mark.parametrize("loss, heads, personalization, aggregate", [
    ("hinge", 1, "none", True),
    ("hinge", 3, "history", False),
    ("sampled_softmax", 2, "profile", True),
])
def test_gradients_reach_both_towers(loss, heads, personalization, aggregate):
    layout = FakeLayoutSpec()
    cfg = ModelConfig(num_heads=heads, personalization=personalization, loss=loss,
                      softmax_random_negatives=4, embedding_partitions=2,
                      aggregate_on_ps=aggregate, **SMALL)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        features = FakeCatalog(layout).batch(12, 6, np.random.RandomState(0),
                                             labels=[1] * 10 + [0] * 2)
        spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                             {"model_config": cfg, "layout_spec": layout, "seed": 1})
        variables = tf.compat.v1.trainable_variables()
        grads = tf.gradients(spec.loss, variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = sess.run([tf.convert_to_tensor(g) for g in grads])
    norms = {}
    for var, g in zip(variables, values):
        name = var.name.split(":")[0]
        name = name.rsplit("/part_", 1)[0]
        norms[name] = norms.get(name, 0.0) + float(np.abs(g).sum())
    expected = ["dpsr/embeddings/tokens", "dpsr/embeddings/item_brand",
                "dpsr/embeddings/item_category", "dpsr/item_tower/layer_0/kernel",
                "dpsr/item_tower/layer_1/kernel", "dpsr/query_tower/projection/kernel"]
    expected += [f"dpsr/query_tower/head_{h}/layer_{i}/kernel" for h in range(heads)
                 for i in range(2)]
    if personalization != "none":
        expected.append("dpsr/embeddings/user_gender")
    if personalization == "history":
        expected.append("dpsr/embeddings/history_items")
    for name in expected:
        assert norms.get(name, 0.0) > 0, f"no gradient reaches {name}: {sorted(norms)}"
    assert set(norms) >= set(expected)


@pytest.mark.parametrize("personalization, heads, partitions, encoder", [
    ("none", 1, 1, "separate"), ("history", 2, 3, "separate"), ("history", 2, 2, "shared")])
def test_fresh_graph_restore_reproduces_estimator_embeddings(tiny_layout, tmp_path,
                                                             personalization, heads,
                                                             partitions, encoder):
    spec = tiny_layout
    cfg = ModelConfig(num_heads=heads, personalization=personalization,
                      embedding_partitions=partitions, **dict(SMALL, text_encoder=encoder))
    model_dir = str(tmp_path / "model")
    write_resolved_config(model_dir, cfg, spec)
    estimator = tf.estimator.Estimator(
        dpsr_model_fn, model_dir=model_dir,
        params={"model_config": cfg, "layout_spec": spec, "batch_size": 16, "seed": 0},
        config=tf.estimator.RunConfig(tf_random_seed=0, save_checkpoints_steps=30))
    estimator.train(pipeline.make_train_input_fn(spec.layout_dir, batch_size=16,
                                                 num_random_negatives=3, seed=0), max_steps=30)
    # The Estimator's own embeddings, through the data pipeline's item / request input fns.
    est_items = np.stack([p["item_embedding"] for p in estimator.predict(
        pipeline.make_item_input_fn(spec.layout_dir, batch_size=64))])
    eval_set = eval_set_lib.load_eval_set(spec, "eval")
    est_queries = np.stack([p["query_embedding"] for p in estimator.predict(
        pipeline.make_request_input_fn(spec.layout_dir, eval_set, batch_size=64))])

    loaded_cfg, loaded_spec = load_model_config(model_dir)
    assert loaded_cfg == cfg
    assert dataclasses.asdict(loaded_spec) == dataclasses.asdict(spec)
    with CheckpointEmbedder(model_dir) as embedder:
        table = layout_lib.load_item_table(spec)
        items = embedder.embed_items(table.token_ids, table.token_splits,
                                     {n: table.feature(n) for n in spec.item_features})
        tok, splits, users, hist = request_inputs(spec, eval_set.query_rows, eval_set.user_rows,
                                                  eval_set.history_ends)
        queries = embedder.embed_queries(tok, splits, users, hist)
    assert items.shape == (spec.num_items, cfg.embedding_dim)
    assert queries.shape == (len(eval_set), heads, cfg.embedding_dim)
    np.testing.assert_array_equal(items, est_items)
    np.testing.assert_array_equal(queries, est_queries)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=-1), 1.0, rtol=1e-5)
    # The checkpoint holds the names the towers document.
    names = {n for n, _ in tf.train.list_variables(model_dir)}
    if encoder == "separate":
        assert {"dpsr/embeddings/tokens", "dpsr/item_tower/layer_0/kernel",
                "dpsr/query_tower/projection/kernel", "dpsr/query_tower/head_0/layer_1/bias",
                "global_step"} <= names
    else:
        assert {"dpsr/embeddings/tokens", "dpsr/text_encoder/layer_0/kernel",
                "dpsr/item_adapter/layer_1/kernel", "dpsr/query_tower/head_1/layer_1/bias",
                "global_step"} <= names
        assert not any("item_tower" in n or "projection" in n for n in names)


SHARED = dict(SMALL, text_encoder="shared", adapter_hidden_units=(8,))


@pytest.mark.parametrize("loss, heads, personalization", [
    ("hinge", 1, "none"), ("sampled_softmax", 2, "history")])
def test_shared_encoder_gradients(loss, heads, personalization):
    layout = FakeLayoutSpec()
    cfg = ModelConfig(num_heads=heads, personalization=personalization, loss=loss,
                      softmax_random_negatives=4, **SHARED)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        features = FakeCatalog(layout).batch(12, 6, np.random.RandomState(0),
                                             labels=[1] * 10 + [0] * 2)
        spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                             {"model_config": cfg, "layout_spec": layout})
        variables = tf.compat.v1.trainable_variables()
        grads = tf.gradients(spec.loss, variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            # The adapters' last layers start at zero, so the layers and features before them
            # get gradients from the second step on.
            sess.run(spec.train_op)
            values = sess.run([tf.convert_to_tensor(g) for g in grads])
    norms = {v.name.split(":")[0]: float(np.abs(g).sum()) for v, g in zip(variables, values)}
    expected = ["dpsr/embeddings/tokens", "dpsr/text_encoder/layer_0/kernel",
                "dpsr/text_encoder/layer_1/kernel", "dpsr/item_adapter/layer_1/kernel",
                "dpsr/embeddings/item_brand"]
    if heads > 1 or personalization != "none":
        expected += [f"dpsr/query_tower/head_{h}/layer_1/kernel" for h in range(heads)]
    for name in expected:
        assert norms.get(name, 0.0) > 0, f"no gradient reaches {name}: {sorted(norms)}"
    # No separate item MLP or query projection exists in the shared design.
    assert not any("item_tower" in n or "projection" in n for n in norms)


def test_shared_encoder_starts_as_one_function_of_the_text():
    # Query text and item title go through the same encoder; the adapters' last layers start
    # at zero, so before training an item and a query with the same tokens get the same
    # embedding (whatever the item's categorical features or the user's profile).
    from dpsr_tf.model.towers import item_tower, query_tower  # pylint: disable=import-outside-toplevel
    layout = FakeLayoutSpec()
    cfg = ModelConfig(num_heads=2, personalization="profile", **SHARED)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        tokens = tf.ragged.constant([[1, 5, 9], [2, 2], [7]], dtype=tf.int64)
        items = item_tower({"item_tokens": tokens, "item_brand": tf.constant([1, 2, 0], tf.int64),
                            "item_category": tf.constant([3, 0, 1], tf.int64)}, cfg, layout)
        queries = query_tower({"query_tokens": tokens,
                               "user_gender": tf.constant([1, 2, 0], tf.int64)}, cfg, layout)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            items, queries = sess.run([items, queries])
    for h in range(2):
        np.testing.assert_allclose(queries[:, h], items, atol=1e-6)
    assert np.abs(items[0] - items[1]).max() > 1e-3     # different texts differ


def _loss_without_and_with_joined(cfg, kind):
    """EVAL loss of one seeded batch of 8 positives, plain and with per-example negatives of
    `kind` ("human_negative" or "hard_negative") joined: 2, 0, 1, 0, 0, 3, 0, 0 items."""
    layout = FakeLayoutSpec()
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        catalog = FakeCatalog(layout)
        features = catalog.batch(8, 6, np.random.RandomState(0), labels=[1] * 8)
        rows = [[3, 4], [], [5], [], [], [6, 7, 8], [], []]
        with_neg = dict(features)
        with_neg[f"{kind}_rows"] = tf.ragged.constant(rows, dtype=tf.int64)
        with_neg.update(catalog.items(sum(rows, []), prefix=f"{kind}_item_"))
        params = {"model_config": cfg, "layout_spec": layout}
        plain = dpsr_model_fn(features, None, tf.estimator.ModeKeys.EVAL, params).loss
        joined = dpsr_model_fn(with_neg, None, tf.estimator.ModeKeys.EVAL, params).loss
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return sess.run([plain, joined])


def test_joined_human_negatives_enter_the_loss():
    # The same batch with and without each query's joined human negatives (the exact terms are
    # checked against hand-worked values in test_losses.py): each adds an active hinge term.
    cfg = ModelConfig(loss="hinge", human_negative_weight=5.0, margin=2.0, **SMALL)
    plain, joined = _loss_without_and_with_joined(cfg, "human_negative")
    # margin 2 makes every hinge term active: each joined negative adds a positive term.
    assert joined > plain


def test_mined_hard_negatives_enter_the_loss():
    # The same batch with and without mined hard negatives joined per example (exact terms:
    # test_losses.py): the item tower embeds them and each adds an active hinge term
    # (margin 2); with hard_negative_weight 0 they are embedded but change nothing.
    losses_by_weight = {}
    for weight in (5.0, 0.0):
        cfg = ModelConfig(loss="hinge", hard_negative_weight=weight, human_negative_weight=0.0,
                          margin=2.0, **SMALL)
        losses_by_weight[weight] = _loss_without_and_with_joined(cfg, "hard_negative")
    plain, joined = losses_by_weight[5.0]
    assert joined > plain
    plain, joined = losses_by_weight[0.0]
    assert joined == pytest.approx(plain, abs=1e-7)
