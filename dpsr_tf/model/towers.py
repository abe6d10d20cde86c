"""The two towers of DPSR as plain functions over a features dict.

Both run in any tf.compat.v1 graph: the Estimator's model_fn, or a fresh graph in which a
tf.compat.v1.train.Saver restores an Estimator checkpoint (export, indexing, evaluation). Every
variable lives under the fixed scope "dpsr" and is created with AUTO_REUSE, so calling a tower
twice (positives and random negatives, or query and item side) shares its weights.

Checkpoint names (partitioned tables are saved under their full name):
  dpsr/embeddings/tokens                  [token_id_space, token_embedding_dim]   both towers
  dpsr/embeddings/item_<name>             [vocab, feature_embedding_dim]          item tower
  dpsr/embeddings/user_<name>             [vocab, feature_embedding_dim]          DPSR-p / -h
  dpsr/embeddings/history_items           [num_items, history_embedding_dim]      DPSR-h
  dpsr/item_tower/layer_<i>/{kernel,bias}                                         item MLP
  dpsr/query_tower/projection/{kernel,bias}    [in, num_heads * query_projection_dim]
  dpsr/query_tower/head_<h>/layer_<i>/{kernel,bias}                               head MLPs
With model = "dssm" the towers are dpsr_tf/model/dssm.py's (variables under dpsr/dssm_*).
With text_encoder = "shared" the item MLP and the query projection/heads are replaced by:
  dpsr/text_encoder/layer_<i>/{kernel,bias}          one MLP for query text and item title
  dpsr/item_adapter/layer_<i>/{kernel,bias}          residual adapter (item categorical features)
  dpsr/query_tower/head_<h>/layer_<i>/{kernel,bias}  residual adapter of head h (+ user features)
With text_encoder = "pretrained" the text encoder is a pretrained BERT-family encoder
(pretrained_encoder/..., dpsr_tf/model/pretrained/bert.py) over the raw text ("query",
"item_text" features) instead of the token bag and MLP; the adapters are the "shared" ones.
"""
from typing import Mapping, Sequence

import tensorflow as tf

from dpsr_tf.model import dssm, embedding, searchgcn
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.pretrained import encoder as pretrained_encoder

SCOPE = "dpsr"


def _dense(x: tf.Tensor, units: int, name: str, activation=None,
           zero_init: bool = False) -> tf.Tensor:
    """x [B, n] -> [B, units]; variables <scope>/<name>/kernel and /bias."""
    with tf.compat.v1.variable_scope(name):
        kernel = tf.compat.v1.get_variable(
            "kernel", shape=[int(x.shape[-1]), units], dtype=tf.float32,
            initializer=tf.compat.v1.zeros_initializer() if zero_init
            else tf.compat.v1.glorot_uniform_initializer())
        bias = tf.compat.v1.get_variable("bias", shape=[units], dtype=tf.float32,
                                         initializer=tf.compat.v1.zeros_initializer())
        y = tf.matmul(x, kernel) + bias
        return activation(y) if activation is not None else y


def _mlp(x: tf.Tensor, hidden_units: Sequence[int], output_dim: int,
         zero_last: bool = False) -> tf.Tensor:
    """ReLU hidden layers, then a linear layer of width output_dim (zero-initialized when
    zero_last: a residual adapter that starts as the identity)."""
    for i, units in enumerate(hidden_units):
        x = _dense(x, units, f"layer_{i}", activation=tf.nn.relu)
    return _dense(x, output_dim, f"layer_{len(hidden_units)}", zero_init=zero_last)


def _pretrained_text(texts: tf.Tensor, cfg: ModelConfig) -> tf.Tensor:
    """[B, H] the pretrained encoder's sentence embeddings of texts [B] string (H must be d)."""
    encoder = pretrained_encoder.graph_encoder(cfg.pretrained_dir,
                                               cfg.pretrained_trainable_layers)
    hidden = encoder.model.config.hidden_size
    if hidden != cfg.embedding_dim:
        raise ValueError(f"ModelConfig.embedding_dim={cfg.embedding_dim}: text_encoder=pretrained "
                         f"needs embedding_dim = the encoder's hidden size {hidden} "
                         f"({encoder.model.directory}); train with --embedding_dim={hidden}")
    return encoder(texts)


def _text_encoder(features: Mapping, side: str, cfg: ModelConfig, layout_spec) -> tf.Tensor:
    """The shared text encoder of side "item" or "query": token bag -> MLP (item_hidden_units
    -> d), [B, d]; with text_encoder "pretrained", the pretrained encoder over the raw text
    (features "item_text" / "query")."""
    tower = f"{side}_tower"
    if cfg.text_encoder == "pretrained":
        return _pretrained_text(_require(features, "item_text" if side == "item" else "query",
                                         tower), cfg)
    tokens, bag_name = _require(features, f"{side}_tokens", tower), f"{side}_tokens_bag"
    with tf.compat.v1.variable_scope("embeddings"):
        bag = embedding.embedding_bag(_token_table(cfg, layout_spec), tokens,
                                      combiner=cfg.combiner, aggregate_on_ps=cfg.aggregate_on_ps,
                                      name=bag_name)
    with tf.compat.v1.variable_scope("text_encoder", reuse=tf.compat.v1.AUTO_REUSE):
        return _mlp(bag, cfg.item_hidden_units, cfg.embedding_dim)


def _residual(text: tf.Tensor, extra: Sequence[tf.Tensor], cfg: ModelConfig,
              zero_last: bool = True) -> tf.Tensor:
    """text + adapter([text, extra...]), the adapter's last layer starting at zero unless
    zero_last is False (then the adapters of the query heads start apart)."""
    x = tf.concat([text] + list(extra), axis=1)
    return text + _mlp(x, cfg.adapter_hidden_units, cfg.embedding_dim, zero_last=zero_last)


def _token_table(cfg: ModelConfig, layout_spec):
    # "weighted" keeps each token's weight logit in one extra column of the same table, so the
    # weights are partitioned and aggregated on the parameter servers with the embeddings.
    width = cfg.token_embedding_dim + (1 if cfg.combiner == "weighted" else 0)
    return embedding.embedding_table(
        "tokens", int(layout_spec.token_id_space), width,
        partitions=max(1, cfg.embedding_partitions), partitioner=cfg.partitioner,
        min_slice_size_bytes=cfg.min_slice_size_bytes)


def _require(features: Mapping, key: str, tower: str):
    if key not in features:
        raise KeyError(f"{tower}: feature {key!r} is missing; got {sorted(features)}")
    return features[key]


def _categorical(features, prefix: str, vocabs: Mapping[str, int], cfg: ModelConfig,
                 tower: str):
    out = []
    for name in sorted(vocabs):
        key = f"{prefix}_{name}"
        ids = _require(features, key, tower)
        table = embedding.embedding_table(key, int(vocabs[name]), cfg.feature_embedding_dim)
        out.append(embedding.categorical_lookup(table, ids, key))
    return out


def item_tower(features: Mapping, model_config: ModelConfig, layout_spec,
               mode=None) -> tf.Tensor:
    """Item embeddings (+ the item's click-graph neighbourhood with tower "searchgcn": then
    also "item_graph_hop1/2" and "_weight" features, dpsr_tf/model/searchgcn.py).

    Args:
      features: "item_tokens" tf.RaggedTensor int64 [B, (Li)] (title n-gram ids) and one
        "item_<name>" int64 [B] per name in layout_spec.item_features (0 = unknown).
      model_config: ModelConfig.
      layout_spec: LayoutSpec (token_id_space, item_features).
      mode: a tf.estimator.ModeKeys value (TRAIN: a sampled searchgcn neighbourhood is drawn;
        the towers have no dropout / batch norm).

    Returns:
      [B, d] float32, rows L2-normalized (d = model_config.embedding_dim).
    """
    text = _text_item_tower(features, model_config, layout_spec)
    if model_config.tower != "searchgcn":
        return text
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        return searchgcn.item_embedding(features, text, model_config, layout_spec,
                                        training=mode == tf.estimator.ModeKeys.TRAIN)


def _text_item_tower(features: Mapping, cfg: ModelConfig, layout_spec) -> tf.Tensor:
    if cfg.model == "dssm":
        return dssm.item_tower(features, cfg, layout_spec)
    if cfg.text_encoder in ("shared", "pretrained"):
        return _shared_item_tower(features, cfg, layout_spec)
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        with tf.compat.v1.variable_scope("embeddings"):
            inputs = [embedding.embedding_bag(
                _token_table(cfg, layout_spec), _require(features, "item_tokens", "item_tower"),
                combiner=cfg.combiner, aggregate_on_ps=cfg.aggregate_on_ps,
                name="item_tokens_bag")]
            inputs += _categorical(features, "item", dict(layout_spec.item_features), cfg,
                                   "item_tower")
        x = tf.concat(inputs, axis=1) if len(inputs) > 1 else inputs[0]
        with tf.compat.v1.variable_scope("item_tower"):
            out = _mlp(x, cfg.item_hidden_units, cfg.embedding_dim)
        return tf.math.l2_normalize(out, axis=-1, name="item_embedding")


def query_tower(features: Mapping, model_config: ModelConfig, layout_spec,
                mode=None) -> tf.Tensor:
    """Multi-head query embeddings (+ the query's click-graph neighbourhood with tower
    "searchgcn": "query_graph_hop1/2" and "_weight" features; none = the text tower alone).

    Args:
      features: "query_tokens" tf.RaggedTensor int64 [B, (Lq)]; with personalization "profile"
        or "history" also one "user_<name>" int64 [B] per name in layout_spec.user_features
        (0 = unknown user); with "history" also "user_history" tf.RaggedTensor int64 [B, (H)] of
        item rows (rows may be empty).
      model_config: ModelConfig.
      layout_spec: LayoutSpec (token_id_space, user_features, num_items).
      mode: a tf.estimator.ModeKeys value (TRAIN: a sampled searchgcn neighbourhood is drawn).

    Returns:
      [B, m, d] float32: m = model_config.num_heads embeddings per query, each L2-normalized.
    """
    text = _text_query_tower(features, model_config, layout_spec)
    if model_config.tower != "searchgcn":
        return text
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        return searchgcn.query_embedding(features, text, model_config, layout_spec,
                                         training=mode == tf.estimator.ModeKeys.TRAIN)


def _text_query_tower(features: Mapping, cfg: ModelConfig, layout_spec) -> tf.Tensor:
    if cfg.model == "dssm":
        return dssm.query_tower(features, cfg, layout_spec)
    if cfg.text_encoder in ("shared", "pretrained"):
        return _shared_query_tower(features, cfg, layout_spec)
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        with tf.compat.v1.variable_scope("embeddings"):
            inputs = [embedding.embedding_bag(
                _token_table(cfg, layout_spec),
                _require(features, "query_tokens", "query_tower"),
                combiner=cfg.combiner, aggregate_on_ps=cfg.aggregate_on_ps,
                name="query_tokens_bag")]
            inputs += _user_inputs(features, cfg, layout_spec)
        x = tf.concat(inputs, axis=1) if len(inputs) > 1 else inputs[0]
        m, p = cfg.num_heads, cfg.query_projection_dim
        with tf.compat.v1.variable_scope("query_tower"):
            projected = tf.reshape(_dense(x, m * p, "projection"), [-1, m, p])
            heads = []
            for h in range(m):
                with tf.compat.v1.variable_scope(f"head_{h}"):
                    heads.append(_mlp(projected[:, h, :], cfg.query_hidden_units,
                                      cfg.embedding_dim))
            out = tf.stack(heads, axis=1)
        return tf.math.l2_normalize(out, axis=-1, name="query_embedding")


def _user_inputs(features: Mapping, cfg: ModelConfig, layout_spec) -> list:
    """User profile embeddings (DPSR-p/-h) and the history bag (DPSR-h), each [B, width]."""
    inputs = []
    if cfg.personalization in ("profile", "history"):
        inputs += _categorical(features, "user", dict(layout_spec.user_features), cfg,
                               "query_tower")
    if cfg.personalization == "history":
        table = embedding.embedding_table(
            "history_items", max(1, int(layout_spec.num_items)),
            cfg.history_embedding_dim, partitions=max(1, cfg.embedding_partitions),
            partitioner=cfg.partitioner, min_slice_size_bytes=cfg.min_slice_size_bytes)
        inputs.append(embedding.embedding_bag(
            table, _require(features, "user_history", "query_tower"), combiner="mean",
            aggregate_on_ps=cfg.aggregate_on_ps, name="user_history_bag"))
    return inputs


def _shared_item_tower(features: Mapping, cfg: ModelConfig, layout_spec) -> tf.Tensor:
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        text = _text_encoder(features, "item", cfg, layout_spec)
        with tf.compat.v1.variable_scope("embeddings"):
            cats = _categorical(features, "item", dict(layout_spec.item_features), cfg,
                                "item_tower")
        out = text
        if cats:
            with tf.compat.v1.variable_scope("item_adapter"):
                out = _residual(text, cats, cfg)
        return tf.math.l2_normalize(out, axis=-1, name="item_embedding")


def _shared_query_tower(features: Mapping, cfg: ModelConfig, layout_spec) -> tf.Tensor:
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        text = _text_encoder(features, "query", cfg, layout_spec)
        with tf.compat.v1.variable_scope("embeddings"):
            users = _user_inputs(features, cfg, layout_spec)
        heads = []
        with tf.compat.v1.variable_scope("query_tower"):
            for h in range(cfg.num_heads):
                with tf.compat.v1.variable_scope(f"head_{h}"):
                    # One head without user features is the shared encoder itself.
                    # Zero-initialized heads are copies that get the same gradient: with
                    # head_assignment "annealed" or "balanced" they start apart.
                    heads.append(_residual(text, users, cfg, zero_last=not (
                        cfg.num_heads > 1 and cfg.head_assignment != "soft"))
                                 if users or cfg.num_heads > 1 else text)
        out = tf.stack(heads, axis=1)
        return tf.math.l2_normalize(out, axis=-1, name="query_embedding")
