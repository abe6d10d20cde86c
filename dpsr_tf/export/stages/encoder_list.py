"""Stage `encoder_list` (an index build with an encoder list and an encoder weight > 0): the
query, as the towers see it (after spelling; at most QUERY_MAX_TOKENS WordPiece tokens),
embedded by the build's pretrained sentence encoder (WordPiece and BERT in the graph, its
weights in the servable's variables) or, when the build names one, by its fast query encoder (a
`--item_side=teacher` model's token-bag query tower over the query's tokens, its variables
under this stage's scope; several such students: the mean of their unit vectors, normalized),
searched in the shard's encoder index, and that list fused with
the served one by weighted reciprocal rank (dpsr_tf/search/encoder_fusion.py).

The served list gains encoder_scores [B, K] (the encoder's cosine, -inf where its list lacks the
item) and source "encoder" for an item only the encoder found. The fusion reads each list's
ranks within the servable, so a servable with an encoder list holds the whole catalog: the
proxy's re-fusion of shards reads dense and lexical scores alone and would drop the encoder's
part, so export refuses a sharded build with an encoder weight, and the proxy keeps such a
servable's own ranking (dpsr_tf/serving/proxy/merge.py).
"""
import contextlib
import dataclasses
import os

import numpy as np
import tensorflow as tf

from dpsr_tf.export.stages.base import ExportFlag, Stage
from dpsr_tf.indexing.encoder_index import QUERY_MAX_TOKENS
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model import query_student
from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.encoder import SentenceEncoder
from dpsr_tf.model.towers import query_tower
from dpsr_tf.search import encoder_fusion, faiss_ops
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig

SCOPE = "encoder_list"
# The [B, K] outputs of earlier stages that follow each result into the fused list, and the value
# an encoder-only result gets.
_CARRIED = {"heads": -1, "dense_scores": -np.inf, "lexical_scores": -np.inf}


@dataclasses.dataclass(frozen=True)
class EncoderListConfig:
    """Attributes:
      encoder_fusion: the encoder list's weight and RRF constant (weight 0: no encoder list).
    """

    encoder_fusion: EncoderFusionConfig = EncoderFusionConfig()


class EncoderListStage(Stage):
    """The served list -> the served list fused with the encoder's (module docstring)."""

    NAME = "encoder_list"
    Config = EncoderListConfig
    FLAGS = (
        ExportFlag("encoder_weight", "float", -1.0,
                   "The encoder list's weight against the served list's 1 (an index build with "
                   "`dpsr index --encoder_list`): 0 = leave it out; -1 = chosen on the layout's "
                   "validation split with the fusion.", field=None),
        ExportFlag("encoder_rrf_k", "float", EncoderFusionConfig.rrf_k,
                   "The encoder list's reciprocal-rank constant (with --encoder_weight > 0).",
                   field=None),
    )

    def __init__(self, index_file: str, pretrained_dir: str, query_models=()):
        """query_models: the build's fast query encoders (QueryModelInfo), () = the encoder."""
        self._index_file = index_file
        self._pretrained_dir = pretrained_dir
        self._query_models = tuple(query_models)
        self._encoder = None
        self._student_variables = None   # one list per student, in query_models order

    @classmethod
    def validate(cls, section: EncoderListConfig) -> None:
        section.encoder_fusion.validate()

    @classmethod
    def prepare(cls, source):
        encoder = source.manifest.encoder
        if encoder is None or not source.servable.encoder_fusion.enabled:
            return None
        if source.manifest.num_shards > 1:
            raise ValueError(f"{source.index_dir}: an encoder list is fused inside one servable "
                             f"that holds the whole catalog, and this build has "
                             f"{source.manifest.num_shards} shards; export with "
                             "--encoder_weight=0, or index the catalog as one shard")
        if source.layout_spec.num_items != encoder.num_docs:
            raise ValueError(f"{source.index_dir}: the encoder list holds {encoder.num_docs} "
                             f"items, the layout {source.layout_spec.num_items}; rebuild it with "
                             "`dpsr index --encoder_only`")
        for student in encoder.query_models:
            # The student reads the ids of this servable's tokenizer (the served model's layout,
            # which may not be the layout the build was checked against).
            query_student.check_tokenizer(student.model_dir, source.layout_spec)
        return cls(source.stage_file(os.path.join(source.index_dir,
                                                  encoder.shards[source.shard].file),
                                     "encoder.faiss"), encoder.pretrained_dir,
                   encoder.query_models)

    def _hits(self, ctx):
        """(scores, labels) [B, k] of the encoder's search (one however many signatures)."""
        def build():
            with tf.compat.v1.variable_scope(SCOPE), tf.name_scope(SCOPE):
                queries = (self._student_queries(ctx) if self._query_models
                           else self._encoder_queries(ctx))
                index = faiss_ops.FaissIndex(self._index_file, shared_name=None,
                                             name="encoder_index")
                return faiss_ops.search(index, queries, ctx.k, name="encoder_search")
        return ctx.once("encoder_list_hits", build)

    def _encoder_queries(self, ctx) -> tf.Tensor:
        model = files.read_pretrained(self._pretrained_dir, with_weights=False)
        self._encoder = SentenceEncoder(model, trainable_layers=0, scope=SCOPE,
                                        max_seq_length=QUERY_MAX_TOKENS)
        return self._encoder(ctx.searched)

    def _student_queries(self, ctx) -> tf.Tensor:
        """The fast query encoders' [B, d] vectors of the query's tokens (the build's layout
        tokenizer is each student's: `dpsr index` checked it). The first student's variables sit
        under this stage's scope, student i's under <scope>/student_<i>; several students: the
        mean of their unit vectors, normalized (query_student.embed_ensemble)."""
        self._student_variables = []
        vectors = []
        for i, student in enumerate(self._query_models):
            config, spec = model_dir_lib.load_model_config(student.model_dir)
            before = set(tf.compat.v1.global_variables())
            with _scoped(_student_scope(i)):
                heads = query_tower({"query_tokens": ctx.features["query_tokens"]}, config,
                                    spec, tf.estimator.ModeKeys.PREDICT)
            self._student_variables.append([v for v in tf.compat.v1.global_variables()
                                            if v not in before])
            vectors.append(heads[:, 0, :])
        if len(vectors) == 1:
            return vectors[0]
        return tf.math.l2_normalize(tf.add_n(vectors), axis=-1, epsilon=1e-24,
                                    name="student_mean")

    def _student_saver(self, i: int):
        """A Saver reading student i's checkpoint names (without this stage's scope) into its
        variables; a partitioned table's slices go under their full name together."""
        prefix = "/".join(p for p in (SCOPE, _student_scope(i)) if p) + "/"
        names = {}
        for variable in self._student_variables[i]:
            info = variable._save_slice_info  # pylint: disable=protected-access
            full = info.full_name if info is not None else variable.op.name
            names.setdefault(full[len(prefix):], []).append(variable)
        return tf.compat.v1.train.Saver(
            {name: parts if parts[0]._save_slice_info is not None  # pylint: disable=protected-access
             else parts[0] for name, parts in names.items()})

    def rank(self, ctx, ranked, direction):
        """The served list fused with the encoder's."""
        del direction
        enc_scores, enc_labels = self._hits(ctx)
        cfg = ctx.servable.encoder_fusion
        with tf.name_scope("encoder_fusion"):
            scores, labels, served_at, encoder_at = encoder_fusion.fuse(
                ranked["labels"], enc_labels, ctx.k, cfg, with_encoder_at=True)
            from_served = served_at >= 0
            at = tf.maximum(served_at, 0)
            out = dict(ranked, scores=scores, labels=labels)
            for alias, pad in _CARRIED.items():
                if alias in ranked:
                    value = tf.gather(ranked[alias], at, batch_dims=1)
                    out[alias] = tf.where(from_served, value, tf.cast(pad, value.dtype))
            served_source = (tf.gather(ranked["source"], at, batch_dims=1) if "source" in ranked
                             else tf.fill(tf.shape(labels), "dense"))
            out["source"] = tf.where(from_served, served_source,
                                     tf.where(labels >= 0, "encoder", ""))
            out["encoder_scores"] = tf.where(
                encoder_at >= 0, tf.gather(enc_scores, tf.maximum(encoder_at, 0), batch_dims=1),
                -np.inf)
        return out

    def owns(self, variable) -> bool:
        return variable.op.name.startswith(SCOPE + "/")

    def restore(self, session, ctx) -> None:
        if self._encoder is not None:   # the weights are read from the directory now
            self._encoder.initialize(session)
        if self._student_variables is not None:
            for i, student in enumerate(self._query_models):
                model_dir_lib.restore(self._student_saver(i), session, student.checkpoint)

    def info(self) -> dict:
        first = self._query_models[0] if self._query_models else None
        return {"encoder_list": {
            "pretrained_dir": self._pretrained_dir,
            "query_model_dir": first.model_dir if first else "",
            "query_checkpoint": first.checkpoint if first else "",
            "query_ensemble": [{"model_dir": m.model_dir, "checkpoint": m.checkpoint}
                               for m in self._query_models[1:]]}}


@contextlib.contextmanager
def _scoped(name: str):
    """Variable and name scope `name` ("" = the current ones)."""
    if not name:
        yield
        return
    with tf.compat.v1.variable_scope(name), tf.name_scope(name):
        yield


def _student_scope(i: int) -> str:
    """The variable scope of student i under the stage's (the first: the stage's own, so a
    one-student servable names its variables as before)."""
    return f"student_{i}" if i else ""
