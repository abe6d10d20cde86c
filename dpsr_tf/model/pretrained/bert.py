"""The BERT encoder in TF ops (TF1 graph, Estimator-compatible), weights from a Hugging Face
checkpoint (files.py).

    encoder = BertEncoder(model.config)              # variables under "pretrained_encoder/"
    sequence = encoder(token_ids, mask)              # [B, T] int32, [B, T] -> [B, T, H] float32
    encoder.initialize(session, model.weights)       # or init_from_checkpoint when training

Variables keep the checkpoint's names and layouts (a dense weight is [out, in], as PyTorch's
Linear stores it), so filling them is a copy: embeddings word/position/token-type + LayerNorm,
then per layer self-attention (query/key/value, output dense, LayerNorm after the residual) and
the feed-forward block (intermediate dense + GELU, output dense, LayerNorm after the residual):
BERT's post-LayerNorm encoder. Dropout is never applied (fine-tuning here adapts a small
catalog's worth of text; the towers' own regularisation stays in the DPSR model).
"""
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from dpsr_tf.model.pretrained.files import BertConfig, _expected_shapes

SCOPE = "pretrained_encoder"
# Added to the attention logits of padding positions: their softmax weight is exp(-1e4) ~ 0.
_MASKED_LOGIT = -10000.0


def _activation(name: str):
    if name == "gelu":
        return lambda x: tf.nn.gelu(x, approximate=False)
    if name == "gelu_new":
        return lambda x: tf.nn.gelu(x, approximate=True)
    return tf.nn.relu


class BertEncoder:
    """The encoder's variables and its forward pass (module docstring).

    Args:
      config: the checkpoint's BertConfig.
      trainable_layers: how many of the top encoder layers are trained (-1: all layers and the
        embeddings; 0: none, the encoder is frozen).
      scope: the variable scope.
    """

    def __init__(self, config: BertConfig, trainable_layers: int = -1, scope: str = SCOPE):
        if trainable_layers < -1 or trainable_layers > config.num_hidden_layers:
            raise ValueError(f"trainable_layers must be -1 (all) or in [0, "
                             f"{config.num_hidden_layers}], got {trainable_layers}")
        self.config = config
        self.scope = scope
        self._vars: Dict[str, tf.Variable] = {}
        first_trained = (0 if trainable_layers == -1
                         else config.num_hidden_layers - trainable_layers)
        with tf.compat.v1.variable_scope(scope, reuse=tf.compat.v1.AUTO_REUSE):
            for name, shape in _expected_shapes(config).items():
                layer = int(name.split(".")[2]) if name.startswith("encoder.layer.") else -1
                trainable = trainable_layers == -1 or 0 <= first_trained <= layer
                self._vars[name] = tf.compat.v1.get_variable(
                    name.replace(".", "/"), shape, tf.float32,
                    initializer=tf.compat.v1.zeros_initializer(), trainable=trainable)

    @property
    def variables(self) -> List[tf.Variable]:
        return list(self._vars.values())

    def variable_of(self, name: str) -> tf.Variable:
        """The variable of a checkpoint weight name (e.g. "embeddings.LayerNorm.weight")."""
        return self._vars[name]

    def build_initializer(self) -> None:
        """Adds the fed assign ops initialize() runs (call it before the graph is finalized,
        e.g. in a model_fn whose Scaffold runs initialize)."""
        if not hasattr(self, "_assign"):
            with tf.name_scope(f"{self.scope}_initialize"):
                self._feeds = {name: tf.compat.v1.placeholder(tf.float32, v.shape)
                               for name, v in self._vars.items()}
                self._assign = tf.group(*[v.assign(self._feeds[name])
                                          for name, v in self._vars.items()])

    def initialize(self, session, weights: Dict[str, np.ndarray]) -> None:
        """Fills the variables with the checkpoint's weights (one fed assign per variable)."""
        self.build_initializer()
        session.run(self._assign, {self._feeds[name]: weights[name] for name in self._vars})

    def _dense(self, x, prefix: str):
        """x [N, in] (packed real tokens, see __call__) -> [N, out]: one 2-D MatMul, so the
        weight gradient is one product. A [B, T, in] input would broadcast the weight
        (BatchMatMulV2) and make a weight-sized gradient copy per text."""
        return tf.matmul(x, self._vars[prefix + ".weight"], transpose_b=True) + \
            self._vars[prefix + ".bias"]

    def _layer_norm(self, x, prefix: str):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        normed = (x - mean) * tf.math.rsqrt(variance + self.config.layer_norm_eps)
        return normed * self._vars[prefix + ".weight"] + self._vars[prefix + ".bias"]

    def __call__(self, token_ids: tf.Tensor, mask: tf.Tensor,
                 token_types: Optional[tf.Tensor] = None) -> tf.Tensor:
        """[B, T, H] float32 hidden states of the last layer (0 at padding positions).

        Every layer but the attention product runs on the real tokens alone, packed [N, H]
        (N = the mask's sum): a batch padded to its longest text costs the dense layers its
        real tokens, not B x T. Attention scatters them back to [B, T] per layer, padding
        masked out of the softmax as before, so the real tokens' states are unchanged.

        Args:
          token_ids: [B, T] int32 WordPiece ids ([CLS] ... [SEP], padded).
          mask: [B, T], 1 for a real token, 0 for padding.
          token_types: [B, T] int32 segment ids; default all 0.
        """
        cfg = self.config
        heads, width = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        with tf.name_scope(self.scope):
            if token_types is None:
                token_types = tf.zeros_like(token_ids)
            real = tf.where(tf.not_equal(mask, 0))                # [N, 2] (text, position)
            padded_shape = tf.concat([tf.shape(token_ids, out_type=tf.int64),
                                      [cfg.hidden_size]], axis=0)  # [B, T, H]
            x = (tf.gather(self._vars["embeddings.word_embeddings.weight"],
                           tf.gather_nd(token_ids, real))
                 + tf.gather(self._vars["embeddings.position_embeddings.weight"], real[:, 1])
                 + tf.gather(self._vars["embeddings.token_type_embeddings.weight"],
                             tf.gather_nd(token_types, real)))    # [N, H]
            x = self._layer_norm(x, "embeddings.LayerNorm")
            mask = tf.cast(mask, tf.float32)
            bias = (1.0 - mask)[:, tf.newaxis, tf.newaxis, :] * _MASKED_LOGIT   # [B, 1, 1, T]
            act = _activation(cfg.hidden_act)

            def split(t):   # [N, H] -> [B, heads, T, width]
                t = tf.scatter_nd(real, t, padded_shape)
                # T spelled out, not -1: a batch of no texts ([0, T, H]) leaves -1 ambiguous.
                return tf.transpose(tf.reshape(t, [padded_shape[0], padded_shape[1], heads,
                                                   width]),
                                    [0, 2, 1, 3])

            for n in range(cfg.num_hidden_layers):
                p = f"encoder.layer.{n}."
                q = split(self._dense(x, p + "attention.self.query"))
                k = split(self._dense(x, p + "attention.self.key"))
                v = split(self._dense(x, p + "attention.self.value"))
                logits = tf.matmul(q, k, transpose_b=True) / np.sqrt(width).astype(np.float32)
                weights = tf.nn.softmax(logits + bias, axis=-1)
                context = tf.gather_nd(tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3]),
                                       real)                      # [N, heads, width]
                context = tf.reshape(context, [-1, cfg.hidden_size])
                x = self._layer_norm(x + self._dense(context, p + "attention.output.dense"),
                                     p + "attention.output.LayerNorm")
                inner = act(self._dense(x, p + "intermediate.dense"))
                x = self._layer_norm(x + self._dense(inner, p + "output.dense"),
                                     p + "output.LayerNorm")
            return tf.scatter_nd(real, x, padded_shape)


def mean_pool(sequence: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """[B, H] mean of the real tokens' hidden states (sentence-transformers' mean pooling)."""
    mask = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
    total = tf.reduce_sum(sequence * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
