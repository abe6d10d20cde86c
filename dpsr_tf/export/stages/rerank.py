"""Stage `rerank` (servables exported with a ranker): DPR (dpsr_tf/ranking) after DPSR
retrieval, in the same graph and the same session.run.

Signatures it adds:

  rerank           {query [B] string, item_ids [B, N] string ("" pads)
                    [, user_<name> [B] string, user_history [B, W] string item ids, oldest
                    first, "" pads: rankers with the "user" feature group]}
                   -> scores [B, N] (ranker logits, input order; -inf for "" and unknown ids),
                      dpsr_scores [B, N], ranked_item_ids [B, N], ranked_scores [B, N]
                      (sorted by the ranker, best first)
  retrieve_rerank  {query [B] string, k? scalar int32}  (the serving_default inputs, and the
                   ranker's user inputs as in `rerank`)
                   -> retrieval as serving_default, then its top N = min(k, rerank_n) items
                      re-ranked: item_ids [B, N], scores [B, N] (ranker), retrieval_scores
                      [B, N] (serving_default's score of each item), dpsr_scores [B, N],
                      retrieval_ranks [B, N] int32 (1-based position in the retrieval list)

The ranker's numeric features come from dpsr_tf.ranking.features.feature_graph over tables
stored as variables (dpr_tables/*, with the item titles), the DPSR query heads from the
servable's own query tower: the features are computed by the same code as in training. The
"user" group's inputs are the ranker's own: profile values map to ids through the layout's user
vocabularies (unknown or absent = 0) and the history keeps the last history_length known item
ids, as in training (ranking/user_features.py). Retrieval itself stays anonymous in
retrieve_rerank, as the ranker's DPSR score features were computed in training.
"""
import os

import numpy as np
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.export.stages.base import ExportFlag, Stage, check, value_to_id_table
from dpsr_tf.export.stages.user_inputs import categorical_input, stage_item_ids
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.towers import query_tower
from dpsr_tf.ranking import features as features_lib
from dpsr_tf.ranking import model as ranker_model
from dpsr_tf.ranking import user_features as user_lib

SCOPES = ("dpr/",)


class RerankStage(Stage):
    """The rerank and retrieve_rerank signatures (module docstring), after the response stage.

    Args:
      ranker_dir: a `dpsr train-ranker` model directory.
      config: its RankerConfig; checkpoint: the ranker checkpoint.
      tables: its FeatureTables; all_item_ids: the staged layout item ids (id -> layout row).
      rerank_n: retrieve_rerank re-ranks the first min(k, rerank_n) retrieved items.
    """

    NAME = "rerank"
    FLAGS = (
        ExportFlag("ranker_dir", "string", None, "A DPR ranker (dpsr train-ranker): adds the "
                   "rerank and retrieve_rerank signatures (docs/ranking.md).", field=None),
        ExportFlag("rerank_n", "integer", 100, "retrieve_rerank re-ranks this many of the top "
                   "retrieved items.", field=None),
    )

    def __init__(self, ranker_dir: str, config, checkpoint: str, tables, all_item_ids: str,
                 rerank_n: int, user_vocabs=None):
        self.ranker_dir = ranker_dir
        self._user_vocabs = dict(user_vocabs or {})
        self.config = config
        self.checkpoint = checkpoint
        self._feature_tables = tables
        self._all_item_ids = all_item_ids
        self.rerank_n = int(rerank_n)

    @classmethod
    def prepare(cls, source):
        ranker_dir, model_config, spec = source.ranker_dir, source.model_config, source.layout_spec
        if not ranker_dir:
            return None
        if source.rerank_n < 1:
            raise ValueError(f"rerank_n must be >= 1, got {source.rerank_n}")
        if source.servable.dense_feedback.enabled and source.manifest.num_shards > 1:
            # retrieve_rerank is one round on each shard: its heads would move toward that
            # shard's own first hits, and the proxy would merge answers to different queries.
            raise ValueError(f"dense feedback with a ranker needs a one-shard index; "
                             f"{source.index_dir} has {source.manifest.num_shards} shards: export "
                             "with --dense_feedback=off, or without --ranker_dir")
        config = ranker_model.load_config(ranker_dir)
        checkpoint = tf.train.latest_checkpoint(ranker_dir)
        if not checkpoint:
            raise ValueError(f"{ranker_dir}: no ranker checkpoint; train it with "
                             f"`dpsr train-ranker --model_dir={ranker_dir}`")
        tables = features_lib.FeatureTables.load(ranker_dir)
        if tables.num_items != spec.num_items:
            raise ValueError(f"{ranker_dir}: the ranker's tables cover {tables.num_items} items, "
                             f"the servable's layout {spec.num_items}: train the ranker "
                             f"on sessions of the same layout")
        if tables.item_embeddings.shape[1] != model_config.embedding_dim:
            raise ValueError(f"{ranker_dir}: ranker features use {tables.item_embeddings.shape[1]}"
                             f"-d DPSR embeddings, the model has {model_config.embedding_dim}")
        return cls(ranker_dir, config, checkpoint, tables, stage_item_ids(source),
                   source.rerank_n, cls._user_assets(source, config, spec))

    @staticmethod
    def _user_assets(source, config, spec) -> dict:
        """Staged user vocabularies of the "user" group, after checking the layout matches."""
        if "user" not in config.feature_groups:
            return {}
        for kind, names, sizes in (("user", config.user_features, config.user_vocab_sizes),
                                   ("item", config.item_features, config.item_vocab_sizes)):
            want = dict(zip(names, sizes))
            have = getattr(spec, f"{kind}_features")
            if want != {n: int(have.get(n, -1)) for n in want}:
                raise ValueError(f"{source.ranker_dir}: the ranker's {kind} features {want} are "
                                 f"not the layout's {dict(have)}: train the ranker on sessions "
                                 f"of the servable's layout")
        if config.history_length > 0 and config.num_items != spec.num_items:
            raise ValueError(f"{source.ranker_dir}: the ranker's history table has "
                             f"{config.num_items} items, the layout {spec.num_items}")
        return {n: source.stage_file(spec.path(f"{layout_lib.USER_VOCAB_DIR}/{n}.txt"),
                                     f"user_vocab_{n}.txt") for n in config.user_features}

    def info(self) -> dict:
        return {"ranker_dir": os.path.abspath(self.ranker_dir), "rerank_n": self.rerank_n}

    def build(self, ctx) -> None:
        self._cfg, self._spec = ctx.model_config, ctx.layout_spec
        titles = ranker_model.utf8(layout_lib.read_lines(
            ctx.layout_spec.path(layout_lib.ITEM_TITLES)))
        with tf.name_scope("rerank"):
            self.tables = features_lib.TableVariables(self._feature_tables)
            with tf.compat.v1.variable_scope("dpr_tables"):
                self._titles_value = tf.compat.v1.placeholder(tf.string, titles.shape,
                                                              name="item_titles_value")
                self._titles = tf.compat.v1.Variable(
                    self._titles_value, trainable=False, name="item_titles",
                    collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES])
                cats = (user_lib.item_categories(ctx.layout_spec, self.config.item_features)
                        if "user" in self.config.feature_groups
                        else np.zeros([len(titles), 0], np.int64))
                self._cats_value = tf.compat.v1.placeholder(tf.int64, cats.shape,
                                                            name="item_categories_value")
                self._cats = tf.compat.v1.Variable(
                    self._cats_value, trainable=False, name="item_categories",
                    collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES])
            self._titles_np, self._cats_np = titles, cats
            self._rows_table = value_to_id_table(self._all_item_ids, "rerank_item_rows")
            self._add_rerank(ctx)
            self._add_retrieve_rerank(ctx)
        dpr_vars = [v for v in tf.compat.v1.global_variables() if v.op.name.startswith("dpr/")]
        self._saver = tf.compat.v1.train.Saver({v.op.name: v for v in dpr_vars})
        filled = self.tables.variables + [self._titles, self._cats]
        self._table_names = {v.op.name for v in filled}
        self._table_init = tf.compat.v1.variables_initializer(filled)

    def owns(self, variable) -> bool:
        """True for the variables this stage restores or fills (not in the DPSR checkpoint)."""
        return variable.op.name.startswith(SCOPES) or variable.op.name in self._table_names

    def restore(self, session, ctx) -> None:
        model_dir_lib.restore(self._saver, session, self.checkpoint)
        feed = dict(self.tables._feed)  # pylint: disable=protected-access
        feed[self._titles_value] = self._titles_np
        feed[self._cats_value] = self._cats_np
        session.run(self._table_init, feed)

    def _heads(self, ctx, query):
        features = {"query_tokens": ctx.tokenize(query), "query": query}
        if self._cfg.personalization in ("profile", "history"):
            for name in self._spec.user_features:
                features[f"user_{name}"] = tf.zeros_like(tf.strings.length(query), tf.int64)
        if self._cfg.personalization == "history":
            features["user_history"] = tf.RaggedTensor.from_row_lengths(
                tf.zeros([0], tf.int64), tf.zeros_like(tf.strings.length(query), tf.int64))
        with tf.name_scope("query_tower"):
            return query_tower(features, self._cfg, self._spec, tf.estimator.ModeKeys.PREDICT)

    def _user_inputs(self, prefix: str, query):
        """({alias: placeholder}, profile ids [B, U] int64, history rows [B, H] int64, -1 pads)
        of the "user" group; ({}, None, None) without it."""
        if "user" not in self.config.feature_groups:
            return {}, None, None
        inputs, ids = {}, []
        for name in self.config.user_features:
            inputs[f"user_{name}"], value = categorical_input(
                f"{prefix}_user_{name}", query, self._user_vocabs[name])
            ids.append(value)
        profile = (tf.stack(ids, axis=1) if ids
                   else tf.zeros(tf.stack([tf.shape(query)[0], 0]), tf.int64))
        length = self.config.history_length
        history = tf.compat.v1.placeholder_with_default(
            tf.fill(tf.stack([tf.shape(query)[0], 0]), ""), [None, None],
            name=f"{prefix}_user_history")
        rows_check = check(tf.equal(tf.shape(history)[0], tf.shape(query)[0]),
                           "user_history must have one row per query; got rows and queries",
                           tf.shape(history)[0], tf.shape(query)[0])
        # The same width bound as the retrieval's user_history: a request cannot make the
        # lookup arbitrarily large.
        max_width = max(1024, length)
        width_check = check(tf.shape(history)[1] <= max_width,
                            f"user_history must have at most {max_width} items per row (the "
                            f"ranker uses the last {length}); got width", tf.shape(history)[1])
        with tf.control_dependencies([rows_check, width_check]):
            rows = self._rows_table.lookup(tf.identity(history))            # -1: "" / unknown
        known = tf.ragged.boolean_mask(rows, rows >= 0)
        known = known[:, -length:] if length > 0 else known[:, :0]
        inputs["user_history"] = history
        return inputs, profile, known.to_tensor(default_value=-1)

    def score(self, query, item_ids, heads, profile=None, history=None):
        """(ranker scores [B, N] with -inf at unknown/padding, dpsr scores [B, N], rows)."""
        rows = self._rows_table.lookup(item_ids)                             # [B, N], -1
        numeric = features_lib.feature_graph(self.tables, query, rows, heads)
        b, n = tf.shape(rows)[0], tf.shape(rows)[1]
        flat_query = tf.repeat(query, n)
        flat_rows = tf.reshape(rows, [-1])
        flat_titles = tf.gather(self._titles, tf.maximum(flat_rows, 0))
        if profile is not None:
            profile, history = tf.repeat(profile, n, axis=0), tf.repeat(history, n, axis=0)
        logits = ranker_model.tower(flat_query, flat_titles,
                                    tf.reshape(numeric, [-1, features_lib.NUM_FEATURES]),
                                    self.config, profile, history, flat_rows,
                                    tf.gather(self._cats, tf.maximum(flat_rows, 0)))
        logits = tf.reshape(logits, tf.stack([b, n]))
        valid = rows >= 0
        scores = tf.where(valid, logits, tf.fill(tf.shape(logits), -np.inf))
        dpsr = numeric[:, :, features_lib.FEATURE_NAMES.index("dpsr_score")]
        dpsr = tf.where(valid, dpsr, tf.fill(tf.shape(dpsr), -np.inf))
        return scores, dpsr, rows

    @staticmethod
    def _sorted(scores, *others):
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        return [tf.gather(x, order, batch_dims=1) for x in (scores,) + others]

    def _add_rerank(self, ctx):
        query = tf.compat.v1.placeholder(tf.string, [None], name="rerank_query")
        item_ids = tf.compat.v1.placeholder(tf.string, [None, None], name="rerank_item_ids")
        rows_check = check(
            tf.equal(tf.shape(query)[0], tf.shape(item_ids)[0]),
            "rerank: item_ids must have one row per query; got rows and queries",
            tf.shape(item_ids)[0], tf.shape(query)[0])
        with tf.control_dependencies([rows_check]):
            q = tf.identity(query)
        user_inputs, profile, history = self._user_inputs("rerank", q)
        scores, dpsr, _ = self.score(q, item_ids, self._heads(ctx, q), profile, history)
        ranked_scores, ranked_ids = self._sorted(scores, item_ids)
        outputs = {"scores": scores, "dpsr_scores": dpsr, "ranked_item_ids": ranked_ids,
                   "ranked_scores": ranked_scores}
        ctx.signatures["rerank"] = (
            {"query": query, "item_ids": item_ids, **user_inputs},
            {k: tf.identity(v, name=f"rerank_{k}") for k, v in outputs.items()})

    def _add_retrieve_rerank(self, ctx):
        inputs, outputs = ctx.signatures["serving_default"]
        heads = ctx.embeddings
        n = tf.minimum(tf.shape(outputs["item_ids"])[1], self.rerank_n)
        top_ids = outputs["item_ids"][:, :n]
        top_scores = outputs["scores"][:, :n]
        user_inputs, profile, history = self._user_inputs("retrieve_rerank", inputs["query"])
        scores, dpsr, _ = self.score(inputs["query"], top_ids, heads, profile, history)
        ranks = tf.tile(tf.range(1, n + 1)[None, :], [tf.shape(top_ids)[0], 1])
        s, ids, retrieval, dp, rk = self._sorted(scores, top_ids, top_scores, dpsr, ranks)
        out = {"item_ids": ids, "scores": s, "retrieval_scores": retrieval, "dpsr_scores": dp,
               "retrieval_ranks": rk}
        ctx.signatures["retrieve_rerank"] = (
            {**inputs, **user_inputs},
            {k: tf.identity(v, name=f"retrieve_rerank_{k}") for k, v in out.items()})
        ctx.defaults["retrieve_rerank"] = dict(ctx.defaults.get("serving_default", {}))
