"""The rewriter's cycle as graph ops, for servables: query text -> one rewrite text, in-graph.

    units = Dpsr>Tokenize(query, the rewriter's unit vocabulary)      [B, query_len]
    title = greedy forward decoding  (at most title_len - 1 units)    [B, title_len]
    rewrite = greedy backward decoding from that title, never repeating a unit
    text = the units joined as units.units_to_text joins them         [B] string

It is the online path of a servable (docs/rewriting.md, "Serving"): queries without a rewrite
table entry get this one rewrite, which the lexical index then searches like a table's. It
decodes exactly as `dpsr rewrite --strategy=greedy --title_beam=1` (generate.Rewriter: the
forward model's best title by greedy search, then the backward model's greedy rewrite with
no_repeat; PAD, BOS and UNK never emitted, EOS not first), so a table built that way and this
path agree. Both decoders are unrolled to their bounded lengths (title_len - 1 and
query_len - 1 steps, each re-reading the whole prefix): the cost per request is fixed.

Variables live under `rewriter/` (the checkpoint's names with that prefix) and are restored
from the rewriter's checkpoint by `restore`, after the servable's own variables.
"""
import dataclasses
from typing import Optional

import tensorflow as tf

from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.rewriting import model as model_lib
from dpsr_tf.rewriting import units as units_lib
from dpsr_tf.rewriting.train import UNITS_TXT, load_rewriter
from dpsr_tf.tokenization import tokenize_op

SCOPE = "rewriter"


def encode_units(queries: tf.Tensor, units_path: tf.Tensor, vocab_size: int,
                 max_len: int) -> tf.Tensor:
    """[B, max_len] int32 unit ids as UnitVocab.encode writes them: the first max_len - 1 units
    (UNK for a unit outside the vocabulary), EOS, then PAD."""
    config = dataclasses.replace(units_lib.UNIT_TOKENIZER, num_oov_buckets=1)
    ids = tokenize_op.tokenize(queries, config, vocab_file=units_path)
    ids = tf.where(ids >= vocab_size, tf.cast(units_lib.UNK, tf.int64), ids)[:, :max_len - 1]
    with_eos = tf.concat([ids, tf.fill([ids.nrows(), 1], tf.cast(units_lib.EOS, tf.int64))],
                         axis=1)
    return tf.cast(with_eos.to_tensor(units_lib.PAD, shape=[None, max_len]), tf.int32)


def greedy_decode(source: tf.Tensor, cfg, direction: str, max_len: int,
                  no_repeat: bool) -> tf.Tensor:
    """[B, max_len] int32: the most probable unit at each step (decoding.greedy's rule), EOS
    where a row ends, PAD after it; a row that reaches max_len units has no EOS."""
    mask = tf.not_equal(source, units_lib.PAD)
    memory = model_lib.encode(tf.nn.embedding_lookup(model_lib.unit_table(cfg), source), mask,
                              cfg, f"{direction}/encoder", False)
    batch = tf.shape(source)[0]
    prefix = tf.fill([batch, 1], units_lib.BOS)
    done = tf.zeros([batch], tf.bool)
    never = tf.one_hot([units_lib.PAD, units_lib.BOS, units_lib.UNK], cfg.vocab_size,
                       on_value=True, off_value=False, dtype=tf.bool)
    never = tf.reduce_any(never, axis=0)                                     # [V]
    eos = tf.one_hot(units_lib.EOS, cfg.vocab_size, on_value=True, off_value=False,
                     dtype=tf.bool)
    out = []
    for t in range(max_len):
        logits = model_lib.decode(memory, mask, prefix, cfg, f"{direction}/decoder",
                                  False)[:, -1, :]
        banned = tf.tile(never[tf.newaxis], [batch, 1])
        if t == 0:
            banned = tf.logical_or(banned, eos[tf.newaxis])
        if no_repeat:
            seen = tf.reduce_any(tf.one_hot(prefix, cfg.vocab_size, on_value=True,
                                            off_value=False, dtype=tf.bool), axis=1)
            banned = tf.logical_or(banned, seen)
        logp = tf.where(banned, tf.constant(-float("inf")), tf.nn.log_softmax(logits))
        unit = tf.cast(tf.argmax(logp, axis=1, output_type=tf.int64), tf.int32)
        unit = tf.where(done, units_lib.PAD, unit)
        done = tf.logical_or(done, tf.equal(unit, units_lib.EOS))
        out.append(unit)
        prefix = tf.concat([prefix, unit[:, tf.newaxis]], axis=1)
    return tf.stack(out, axis=1)


def as_source(units: tf.Tensor) -> tf.Tensor:
    """Decoded units [B, n] -> a source [B, n + 1] as UnitVocab.encode writes one: EOS added to
    the rows that stopped at the length bound."""
    ended = tf.reduce_any(tf.equal(units, units_lib.EOS), axis=1)
    last = tf.where(ended, units_lib.PAD, units_lib.EOS)
    return tf.concat([units, last[:, tf.newaxis]], axis=1)


def units_text(units: tf.Tensor, keys: tf.lookup.StaticHashTable) -> tf.Tensor:
    """[B] the text of each row of unit ids (up to EOS; reserved ids dropped) as
    units.units_to_text writes it: words spaced, CJK characters glued to CJK neighbours."""
    kept = tf.ragged.boolean_mask(units, units >= len(units_lib.RESERVED))
    dense = keys.lookup(tf.cast(kept, tf.int64)).to_tensor("")
    kind = tf.strings.substr(dense, 0, 1)
    value = tf.strings.regex_replace(dense, "^[a-z]:", "")  # substr fails on "" (padding)
    previous = tf.concat([tf.fill([tf.shape(kind)[0], 1], ""), kind[:, :-1]], axis=1)
    glued = tf.logical_or(tf.equal(previous, ""),
                          tf.logical_and(tf.equal(kind, "c"), tf.equal(previous, "c")))
    piece = tf.where(glued, value, tf.strings.join([" ", value]))
    return tf.strings.reduce_join(tf.where(tf.equal(dense, ""), "", piece), axis=1)


class OnlineRewriter:
    """A trained rewriter's greedy cycle in the current graph (module docstring).

    Args:
      rewriter_dir: a `dpsr train-rewriter` directory.
      units_path: scalar string tensor of its unit vocabulary, read by Dpsr>Tokenize on every
        run; default the directory's own file. A servable passes the staged asset's run-time
        path (servable_graph.run_time_path) so the directory can move.
      units_init_path: the same file for the id -> unit table's initializer (a servable passes
        the asset tensor itself, which loaders remap for initializers); default units_path.
      checkpoint: default the newest.
    """

    def __init__(self, rewriter_dir: str, units_path: Optional[tf.Tensor] = None,
                 units_init_path: Optional[tf.Tensor] = None,
                 checkpoint: Optional[str] = None):
        self.config, self.vocab, _ = load_rewriter(rewriter_dir)
        self.checkpoint = checkpoint or tf.train.latest_checkpoint(rewriter_dir)
        if not self.checkpoint:
            raise FileNotFoundError(f"{rewriter_dir} has no checkpoint; train it with "
                                    f"`dpsr train-rewriter --model_dir={rewriter_dir}`")
        self.units_file = f"{rewriter_dir}/{UNITS_TXT}"
        self._units_path = units_path
        self._units_init_path = units_init_path
        self._saver = None

    def rewrite(self, queries: tf.Tensor) -> tf.Tensor:
        """[B] string: each query's rewrite ("" when the backward model emits nothing)."""
        cfg = self.config
        units_path = (self._units_path if self._units_path is not None
                      else tf.constant(self.units_file))
        with tf.name_scope("online_rewrite"), tf.compat.v1.variable_scope(SCOPE):
            source = encode_units(queries, units_path, cfg.vocab_size, cfg.query_len)
            title = greedy_decode(source, cfg, "forward", cfg.title_len - 1, no_repeat=False)
            rewrite = greedy_decode(as_source(title), cfg, "backward", cfg.query_len - 1,
                                    no_repeat=True)
            init = tf.lookup.TextFileInitializer(
                self._units_init_path if self._units_init_path is not None else units_path,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE)
            keys = tf.lookup.StaticHashTable(init, default_value="", name="unit_keys")
            text = units_text(rewrite, keys)
        if self._saver is None:
            names = {v.op.name[len(SCOPE) + 1:]: v for v in tf.compat.v1.global_variables()
                     if self.owns(v)}
            self._saver = tf.compat.v1.train.Saver(names)
        return text

    @staticmethod
    def owns(variable) -> bool:
        """True for the variables `restore` fills (not in the servable's own checkpoint)."""
        return variable.op.name.startswith(SCOPE + "/")

    def restore(self, session) -> None:
        if self._saver is None:
            raise RuntimeError("OnlineRewriter.restore before rewrite(): no variables yet")
        model_dir_lib.restore(self._saver, session, self.checkpoint)
