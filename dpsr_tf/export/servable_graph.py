"""The serving graph of a DPSR servable: query text in, item ids out, in one TF1 graph.

    query (string [B])  --Dpsr>Tokenize-->  query tower (m heads)  --Dpsr>FaissSearch per head-->
    merge_heads (dedupe, best score, head)  --id map-->  item_ids [B, K], scores [B, K], heads [B, K]

A hybrid servable (the index build has a lexical section and ServableConfig.hybrid) also
tokenizes the query with the lexical index's tokenizer configuration, searches the shard's BM25
index (Dpsr>LexicalSearch, same labels as FAISS) and fuses both lists by label
(dpsr_tf/search/fusion.py); it adds source [B, K] ("dense", "lexical", "both"), dense_scores and
lexical_scores [B, K] (-inf where a list lacks the item) and fusion_rule [B] (the rule as JSON) so
that the proxy can re-fuse the answers of several shards. With a rewrite table asset, the
query's rewrites are searched too and merged into its lexical list
(dpsr_tf/search/rewrite_merge.py) before the fusion; source is then "rewrite" for an item that
only a rewrite's lexical list found. With an online rewriter
(dpsr_tf/rewriting/online.py), a query without a table entry gets the rewriter's greedy rewrite
decoded in-graph as its first rewrite. A hybrid servable also has a `lexical` signature: that
lexical list alone (item_ids, scores, source "lexical" or "rewrite"), to see what the lexical
side recalls whatever weight the fusion gives it.

With a speller vocabulary asset (the index build's, ServableConfig.spelling), Dpsr>SpellCorrect
corrects the words of each query that no catalog item uses before the query tower and BM25 see
it ("ceilikng fan" -> "ceiling fan"; dpsr_tf/tokenization/speller.py); rewrite tables and
SearchGCN's query graph still look the query up as typed.

With dense feedback (ServableConfig.dense_feedback, search/dense_feedback.py) the query heads
first search their top few items, move toward those items' mean embedding (a variable of the
shard's item embeddings by label, filled by the export) and then search for the list. A shard
knows only its own first hits, so each searching signature S also gets S.feedback_hits (the
shard's first hits and their embeddings) and S.feedback_search (S with the heads moved along a
given feedback_direction [B, d]): over shards, the proxy pools every shard's first hits and
sends each the whole catalog's direction (dpsr_tf/serving/proxy/feedback_rounds.py).

Every file the graph reads (index, id maps, vocabularies) is a constant path registered in the
ASSET_FILEPATHS collection, so SavedModelBuilder copies it into assets/ and the loader remaps it:
the servable directory can be copied anywhere. dpsr_tf/export/saved_model_export.py builds, restores and
saves this graph; this module only wires it.
"""
import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from dpsr_tf.model.towers import item_tower, query_tower
from dpsr_tf.tokenization import spell_op, tokenize_op
from dpsr_tf.search import dense_feedback, faiss_ops, lexical_ops
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search import fusion as fusion_lib
from dpsr_tf.search.head_merge import merge_heads
from dpsr_tf.indexing import index_layout
from dpsr_tf.indexing.lexical_manifest import LexicalConfig
from dpsr_tf.search import rewrite_merge


@dataclasses.dataclass(frozen=True)
class ServableConfig:
    """Request limits and search settings baked into a servable.

    Attributes:
      default_k: results per query when the request has no `k`.
      max_k: the largest `k` a request may ask for (each head searches k items).
      max_query_bytes: longer queries are rejected (INVALID_ARGUMENT); empty ones too.
      nprobe: IVF lists probed per search (0 = the value stored in the index).
      ef_search: HNSW efSearch per search (0 = the value stored in the index).
      hybrid: fuse the lexical index with the dense one when the index build has one.
      fusion: how a hybrid servable fuses the two lists.
      mmap_index: memory-map the FAISS index's IVF inverted lists read-only instead of reading
        them into each process: several `dpsr serve` processes serving the version (one port,
        docs/serving.md) then share one copy in the page cache. What is mapped is a snapshot
        of the asset in the asset cache directory, never the file under the model path. Other
        index types are read either way (FaissIndex's mmap).
      rewrites: how a hybrid servable merges the rewrites' lexical lists.
      spelling: correct each query with the catalog speller before the query tower and BM25
        see it, when the index build has a speller vocabulary (dpsr_tf/tokenization/speller.py).
      dense_feedback: move each query head toward its first hits before the dense search
        (search/dense_feedback.py); the graph then holds the shard's item embeddings, filled by
        the export (ServableGraph.feedback_table).
    """

    default_k: int = 100
    max_k: int = 1000
    max_query_bytes: int = 4096
    nprobe: int = 0
    ef_search: int = 0
    hybrid: bool = True
    fusion: fusion_lib.FusionConfig = fusion_lib.FusionConfig()
    mmap_index: bool = False
    rewrites: rewrite_merge.RewriteConfig = rewrite_merge.RewriteConfig()
    spelling: bool = True
    dense_feedback: FeedbackConfig = FeedbackConfig()

    def validate(self):
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"need 1 <= default_k <= max_k, got default_k={self.default_k}, "
                             f"max_k={self.max_k}")
        if self.max_query_bytes < 1:
            raise ValueError(f"max_query_bytes must be >= 1, got {self.max_query_bytes}")
        if self.nprobe < 0 or self.ef_search < 0:
            raise ValueError(f"nprobe and ef_search must be >= 0, got {self.nprobe}, "
                             f"{self.ef_search}")
        self.fusion.validate()
        self.rewrites.validate()
        self.dense_feedback.validate()
        if self.fusion.lexical_k > lexical_ops.MAX_K:
            raise ValueError(f"lexical_k must be <= {lexical_ops.MAX_K}, got "
                             f"{self.fusion.lexical_k}")


@dataclasses.dataclass(frozen=True)
class AssetPaths:
    """Files the graph reads (staged copies with unique base names)."""

    index: str                      # the FAISS index of this servable's shard
    shard_ids: str                  # id map of the shard: line i = item id of FAISS label i
    all_item_ids: str               # the layout's item ids: line r = item id of row r (history)
    tokenizer_vocab: Optional[str]  # vocabulary-mode tokenizer, else None
    user_vocabs: Mapping[str, str]  # user feature -> its values file (line i -> id i + 1)
    item_vocabs: Mapping[str, str]  # item feature -> its values file (line i -> id i + 1)
    lexical_index: Optional[str] = None           # the shard's lexical.idx (hybrid servables)
    lexical_config: Optional[LexicalConfig] = None  # its tokenizer features and BM25 settings
    graph_queries: Optional[str] = None           # searchgcn: in-graph query texts (graph_lookup)
    rewrite_table: Optional[str] = None  # key<TAB>rewrites joined by \x1f (hybrid servables)
    speller_vocab: Optional[str] = None  # the catalog speller's words (spelling servables)


def asset(path: str) -> tf.Tensor:
    """The path as a graph constant registered as an asset (copied into assets/, remapped on
    load)."""
    t = tf.constant(path, name="asset_path")
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, t)
    return t


def run_time_path(asset_path: tf.Tensor, name: str) -> tf.Tensor:
    """An asset's path for an op that opens the file when it runs (Dpsr>Tokenize's vocabulary),
    not at initialization: loaders feed the moved assets' paths only to the SavedModel's
    main_op, so the path lives in a local variable that main_op assigns
    (saved_model_export: main_op runs local_variables_initializer)."""
    path = tf.compat.v1.Variable(asset_path, trainable=False, name=name,
                                 collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])
    return tf.identity(path)


def _value_to_id_table(path: str, name: str):
    """string -> int64 id (line number + 1), 0 for values not in the file (unknown)."""
    init = tf.lookup.TextFileInitializer(
        asset(path), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    return tf.lookup.StaticHashTable(init, default_value=-1, name=name)


def _categorical_input(name: str, like: tf.Tensor, vocab_path: str):
    """An optional string input [B] beside `like` [B] and its int64 ids (0 = unknown/absent).

    Returns:
      (the placeholder, its ids after a check that it has one value per row of `like`).
    """
    value = tf.compat.v1.placeholder_with_default(tf.fill(tf.shape(like), ""), [None], name=name)
    table = _value_to_id_table(vocab_path, f"{name}_ids")
    check = _check(tf.equal(tf.size(value), tf.size(like)),
                   f"{name} must have one value per {like.op.name}; got sizes",
                   tf.size(value), tf.size(like))
    with tf.control_dependencies([check]):
        return value, table.lookup(value) + 1


def _check(condition, *message):
    return tf.debugging.Assert(condition, list(message), summarize=8)


class ServableGraph:
    """Builds the inputs, outputs and signatures of a servable in the current TF1 graph.

    Attributes after construction: `signatures`, a dict signature name -> (inputs dict,
    outputs dict) of tensors, and `defaults`, signature name -> input alias -> the numpy value
    a server feeds when a request leaves that input out (TF Serving's SignatureDef.defaults).

    Signatures: serving_default {query, k?}; personalized {query, k?, user_<f>.., user_history}
    (personalized models only); lexical {query, k?} (hybrid servables only); query_embedding;
    item_embedding; with dense feedback, S.feedback_hits and S.feedback_search of each of
    serving_default and personalized (module docstring).
    """

    def __init__(self, model_config, layout_spec, assets: AssetPaths,
                 servable: ServableConfig = ServableConfig(), online_rewriter=None):
        """online_rewriter: an OnlineRewriter (hybrid servables) for queries without a rewrite
        table entry; its variables are restored by its own `restore`."""
        servable.validate()
        if online_rewriter is not None and assets.lexical_index is None:
            raise ValueError("an online rewriter searches the lexical index: the servable has "
                             "none (build the index with `dpsr index --lexical`, keep hybrid)")
        self._online = online_rewriter
        self._cfg = model_config
        self._spec = layout_spec
        self._assets = assets
        self._servable = servable
        self._tok_config = dataclasses.replace(layout_spec.tokenizer_config, vocab_file=None)
        self._vocab = (run_time_path(asset(assets.tokenizer_vocab), "tokenizer_vocab_path")
                       if assets.tokenizer_vocab else None)
        self._speller = (run_time_path(asset(assets.speller_vocab), "speller_vocab_path")
                         if assets.speller_vocab else None)
        self.signatures = {}
        self.defaults = {}   # signature -> input alias -> numpy default (SignatureDef.defaults)
        # [labels of the shard, d] item embeddings by FAISS label, for dense feedback; not in
        # the model's checkpoint: the export loads it (owns() keeps it out of the restore).
        self.feedback_table = None
        self._input_checks = []  # the request checks of _query_inputs
        self._cached = {}        # name -> graph object built once, shared by the signatures
        query_inputs, query_features = self._query_inputs()
        with tf.name_scope("query_tower"):
            embeddings = query_tower(query_features, model_config, layout_spec,
                                     tf.estimator.ModeKeys.PREDICT)        # [B, m, d]
        outputs = self._search(self._searched, query_inputs["k"], embeddings)
        k_default = {"k": np.array(servable.default_k, np.int32)}
        # serving_default: query (+ optional k). A user-less request is an unknown user, the
        # same graph with the user inputs at their defaults.
        anonymous = {k: v for k, v in query_inputs.items() if k in ("query", "k")}
        self.signatures["serving_default"] = (anonymous, outputs)
        self.defaults["serving_default"] = k_default
        if len(query_inputs) > len(anonymous):
            # personalized: every user input is required, so batching servers can stack
            # requests along dim 0; send "" for an unknown value.
            self.signatures["personalized"] = (query_inputs, outputs)
            self.defaults["personalized"] = k_default
        if self._assets.lexical_index is not None:
            self.signatures["lexical"] = (anonymous, self._lexical_signature(
                self._searched, query_inputs["k"]))
            self.defaults["lexical"] = k_default
        self.signatures["query_embedding"] = (
            {k: v for k, v in query_inputs.items() if k != "k"}, {"embedding": embeddings})
        self.signatures["item_embedding"] = self._item_embedding()
        if servable.dense_feedback.enabled:
            for name in ("serving_default", "personalized"):
                if name in self.signatures:
                    self._add_feedback_rounds(name, embeddings)

    def _tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return tokenize_op.tokenize(texts, self._tok_config, vocab_file=self._vocab)

    def _query_inputs(self):
        s = self._servable
        query = tf.compat.v1.placeholder(tf.string, [None], name="query")
        self._query = query
        k = tf.compat.v1.placeholder_with_default(tf.constant(s.default_k, tf.int32), [],
                                                  name="k")
        lengths = tf.strings.length(query)
        checks = [
            _check(tf.reduce_all(lengths > 0), "query must not be empty; got byte lengths",
                   lengths),
            _check(tf.reduce_all(lengths <= s.max_query_bytes),
                   f"query must be at most {s.max_query_bytes} bytes; got byte lengths",
                   lengths),
            _check(tf.logical_and(k >= 1, k <= s.max_k),
                   f"k must be in [1, {s.max_k}]; got", k),
        ]
        inputs = {"query": query, "k": k}
        self._input_checks = checks
        with tf.control_dependencies(checks):
            searched = self._spell_corrected(tf.identity(query))
        # What the query tower and BM25 see; rewrite tables and SearchGCN's graph look up the
        # query as typed.
        self._searched = searched
        features = {"query_tokens": self._tokenize(searched)}
        if self._cfg.tower == "searchgcn" and self._assets.graph_queries:
            from dpsr_tf.export import graph_lookup  # pylint: disable=import-outside-toplevel
            features.update(graph_lookup.query_graph_features(
                query, self._spec, asset(self._assets.graph_queries)))
        if self._cfg.personalization in ("profile", "history"):
            for name in sorted(self._spec.user_features):
                # Absent: "unknown" (id 0), like a logged-out user.
                key = f"user_{name}"
                inputs[key], features[key] = _categorical_input(
                    key, query, self._assets.user_vocabs[name])
        if self._cfg.personalization == "history":
            # user_history [B, W] item ids, oldest first, "" pads a row. Training saw at most
            # the last history_length items of a user (dpsr_tf/data/pipeline.py), so the
            # servable keeps the last history_length known items of each row; W is capped so
            # a request cannot make the lookup arbitrarily large.
            max_width = max(1024, self._spec.history_length)  # items a row may send
            history = tf.compat.v1.placeholder_with_default(
                tf.fill(tf.stack([tf.shape(query)[0], 0]), ""), [None, None],
                name="user_history")
            width_check = _check(tf.shape(history)[1] <= max_width,
                                 f"user_history must have at most {max_width} items per row "
                                 "(the model uses the last "
                                 f"{self._spec.history_length}); got width", tf.shape(history)[1])
            with tf.control_dependencies([width_check]):
                checked = tf.identity(history)
            table = _value_to_id_table(self._assets.all_item_ids, "history_item_rows")
            rows = table.lookup(checked)  # item row, -1 for padding "" and unknown ids
            known = tf.ragged.boolean_mask(rows, rows >= 0)
            if self._spec.history_length > 0:
                known = known[:, -self._spec.history_length:]
            features["user_history"] = known
            inputs["user_history"] = history
        return inputs, features

    def _spell_corrected(self, query: tf.Tensor) -> tf.Tensor:
        """[B] each query with the words no catalog item uses corrected (the catalog speller),
        or the query itself without a speller."""
        if self._speller is None:
            return query
        with tf.name_scope("spelling"):
            corrected, _ = spell_op.spell_correct(query, self._speller)
        return corrected

    def _search(self, query: tf.Tensor, k: tf.Tensor, embeddings: tf.Tensor,
                direction: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """The list of each query: dense search (after dense feedback, along `direction` [B, d]
        when given, else toward the shard's own first hits), fused with BM25 when hybrid."""
        s = self._servable
        index = self._index()
        if s.dense_feedback.enabled:
            with tf.name_scope("dense_feedback"):
                if direction is None:   # the shard's own first hits (the catalog's: one shard)
                    _, first_labels = self._first_hits(index, embeddings)
                    direction = dense_feedback.hit_mean(first_labels, self._table())
                embeddings = dense_feedback.move(embeddings, direction, s.dense_feedback)
        scores, labels = [], []
        with tf.name_scope("search"):
            for h in range(self._cfg.num_heads):
                sc, lb = faiss_ops.search(index, embeddings[:, h, :], k, nprobe=s.nprobe,
                                          ef_search=s.ef_search, name=f"head_{h}")
                scores.append(sc)
                labels.append(lb)
            top_scores, top_labels, top_heads = merge_heads(
                tf.stack(scores, axis=1), tf.stack(labels, axis=1), k)
        outputs = {"scores": top_scores, "heads": top_heads}
        if self._assets.lexical_index is not None:
            outputs, top_labels = self._fuse_lexical(query, k, top_scores, top_labels, top_heads)
        outputs["item_ids"] = self._item_ids(top_labels)
        return {alias: tf.identity(t, name=alias) for alias, t in outputs.items()}

    def owns(self, variable) -> bool:
        """Whether a global variable is the graph's own (filled by the export, not restored)."""
        return (self.feedback_table is not None
                and variable.op.name == self.feedback_table.op.name)

    def _index(self):
        return self._once("item_index", lambda: faiss_ops.FaissIndex(
            self._assets.index, mmap=self._servable.mmap_index, shared_name=None,
            name="item_index"))

    def _first_hits(self, index, embeddings: tf.Tensor):
        """([B, f] scores, [B, f] labels) of each query's first `items` hits in the shard, merged
        over heads as the served list is (-1 labels pad); built once for every signature."""
        s = self._servable

        def build():
            with tf.name_scope("dense_feedback"):
                first = tf.constant(s.dense_feedback.items, tf.int32)
                scores, labels = [], []
                for h in range(self._cfg.num_heads):
                    sc, lb = faiss_ops.search(index, embeddings[:, h, :], first,
                                              nprobe=s.nprobe, ef_search=s.ef_search,
                                              name=f"first_head_{h}")
                    scores.append(sc)
                    labels.append(lb)
                top_scores, top_labels, _ = merge_heads(
                    tf.stack(scores, axis=1), tf.stack(labels, axis=1), first)
                return top_scores, top_labels
        return self._once("first_hits", build)

    def _table(self):
        """[labels of the shard, d] the shard's item embeddings by FAISS label (one variable
        however many searches read it; the export fills it)."""
        def build():
            labels_in_shard = len(index_layout.read_id_map(self._assets.shard_ids))
            return tf.compat.v1.Variable(
                tf.zeros([labels_in_shard, self._cfg.embedding_dim], tf.float32),
                trainable=False, name="feedback_item_embeddings")
        self.feedback_table = self._once("feedback_table", build)
        return self.feedback_table

    def _add_feedback_rounds(self, name: str, embeddings: tf.Tensor) -> None:
        """Signature `name`'s two feedback rounds, which the proxy uses over shards (module
        docstring; a one-shard servable has them too, so any export can be sharded later):
        name.feedback_hits (its inputs without k) -> hit_scores [B, f] (-inf pads) and
        hit_embeddings [B, f, d]; name.feedback_search (its inputs and feedback_direction) ->
        its outputs, the heads moved along the direction."""
        inputs, _ = self.signatures[name]
        d = self._cfg.embedding_dim

        def hits():
            scores, labels = self._first_hits(self._index(), embeddings)
            with tf.name_scope("feedback_hits"):
                return {
                    dense_feedback.HIT_SCORES: tf.identity(tf.where(
                        labels >= 0, scores, tf.fill(tf.shape(scores), -np.inf)),
                        name=dense_feedback.HIT_SCORES),
                    dense_feedback.HIT_EMBEDDINGS: tf.identity(dense_feedback.hit_embeddings(
                        labels, self._table()), name=dense_feedback.HIT_EMBEDDINGS)}

        def direction():
            given = tf.compat.v1.placeholder(tf.float32, [None, d],
                                             name=dense_feedback.DIRECTION_INPUT)
            rows = tf.shape(given)[0]
            checks = [
                _check(tf.equal(rows, tf.shape(self._query)[0]),
                       f"{dense_feedback.DIRECTION_INPUT} must have one row per query; got "
                       "rows, queries", rows, tf.shape(self._query)[0]),
                _check(tf.reduce_all(tf.math.is_finite(given)),
                       f"{dense_feedback.DIRECTION_INPUT} must be finite"),
            ]
            with tf.control_dependencies(checks):
                return given, tf.identity(given)

        def search():
            given, checked = self._once("feedback_direction", direction)
            with tf.name_scope("feedback_search"):
                return given, self._search(self._searched, inputs["k"], embeddings, checked)

        given, outputs = self._once("feedback_search", search)
        self.signatures[name + dense_feedback.HITS_SUFFIX] = (
            {k: v for k, v in inputs.items() if k != "k"}, self._once("feedback_hits", hits))
        self.signatures[name + dense_feedback.SEARCH_SUFFIX] = (
            dict(inputs, **{dense_feedback.DIRECTION_INPUT: given}), outputs)
        self.defaults[name + dense_feedback.SEARCH_SUFFIX] = self.defaults[name]

    def _once(self, name: str, build):
        """The graph object `name`, built by build() on first use (one table or index resource
        however many signatures read it)."""
        if name not in self._cached:
            self._cached[name] = build()
        return self._cached[name]

    def _item_ids(self, labels: tf.Tensor) -> tf.Tensor:
        """Item ids of shard labels ("" for -1)."""
        def build():
            init = tf.lookup.TextFileInitializer(
                asset(self._assets.shard_ids), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
            return tf.lookup.StaticHashTable(init, default_value="", name="item_ids_of_labels")
        return self._once("id_table", build).lookup(labels)

    def _lexical_list(self, query, lexical_k):
        """The shard's BM25 list of each query, merged with its rewrites' lists when the
        servable has a rewrite table.

        Returns:
          scores [B, n] float32 (-inf pads), labels [B, n] int64 (-1 pads) and, with a rewrite
          table, [B, n] labels that only a rewrite found (-1 elsewhere), else None.
        """
        index = self._once("lexical_index", lambda: lexical_ops.LexicalIndex(
            self._assets.lexical_index, name="lexical_index"))
        tokens = tokenize_op.tokenize(query, self._assets.lexical_config.tokenizer_config())
        scores, labels = lexical_ops.search(index, tokens, lexical_k,
                                            self._servable.fusion.lexical_min_score)
        if self._assets.rewrite_table is None and self._online is None:
            return scores, labels, None
        return self._rewrite_lists(query, index, lexical_k, scores, labels)

    def _fuse_lexical(self, query, k, dense_scores, dense_labels, dense_heads):
        """BM25 search of the shard and fusion with the dense list (module docstring)."""
        rule = self._servable.fusion
        with tf.name_scope("lexical"):
            lexical_k = k if rule.lexical_k == 0 else tf.constant(rule.lexical_k, tf.int32)
            lex_scores, lex_labels, rewrite_only = self._lexical_list(query, lexical_k)
        with tf.name_scope("fusion"):
            fused = fusion_lib.fuse(dense_scores, dense_labels, lex_scores, lex_labels, k, rule,
                                dense_heads=dense_heads)
            names = tf.constant(["", "dense", "lexical", "both", "rewrite"])
            source = fused["source"]
            if rewrite_only is not None:
                # Lexical-only items (2) that only a rewrite's list held become "rewrite" (4).
                sorted_only = tf.sort(rewrite_only, axis=1)
                at = tf.minimum(tf.searchsorted(sorted_only, fused["labels"], side="left"),
                                tf.shape(sorted_only)[1] - 1)
                via = tf.logical_and(
                    tf.equal(tf.gather(sorted_only, at, batch_dims=1), fused["labels"]),
                    fused["labels"] >= 0)
                source = tf.where(tf.logical_and(via, tf.equal(source, 2)), 4, source)
            outputs = {
                "scores": fused["scores"],
                "heads": fused["heads"],
                "source": tf.gather(names, source),
                "dense_scores": fused["dense_scores"],
                "lexical_scores": fused["lexical_scores"],
                # One copy per row, so the signature stays batch-major (server-side batching).
                "fusion_rule": tf.fill(tf.shape(query)[:1], rule.to_json()),
            }
        return outputs, fused["labels"]

    def _lexical_signature(self, query, k) -> Dict[str, tf.Tensor]:
        """The `lexical` signature: the lexical list built as the fusion builds its own (the
        query's BM25 list merged with its rewrites' by the same rule), but with each list k deep
        and the merged top k returned, where the fusion reads lists lexical_k deep; without the
        dense list. source: "lexical" for an item of the query's own list, "rewrite" for one
        only a rewrite found, "" pads."""
        with tf.name_scope("lexical_signature"):
            with tf.control_dependencies(self._input_checks):
                query, k = tf.identity(query), tf.identity(k)
            scores, labels, rewrite_only = self._lexical_list(query, k)
            code = tf.where(labels >= 0, 1, 0)
            if rewrite_only is not None:
                code = tf.where(rewrite_only >= 0, 2, code)
            outputs = {"item_ids": self._item_ids(labels), "scores": scores,
                       "source": tf.gather(tf.constant(["", "lexical", "rewrite"]), code)}
        return {alias: tf.identity(t, name=f"lexical_{alias}") for alias, t in outputs.items()}

    def _rewrite_lists(self, query, index, lexical_k, lex_scores, lex_labels):
        """The query's lexical list merged with its rewrites' lists (the rewrite table's and/or
        the online rewriter's).

        Returns:
          merged scores [B, n], labels [B, n] (-1 pads) and [B, n] int64 labels that only a
          rewrite found (-1 elsewhere), n = the lexical list's length.
        """
        cfg = self._servable.rewrites
        with tf.name_scope("rewrites"):
            batch = tf.shape(query)[0]
            if self._assets.rewrite_table is not None:
                texts, missing = self._table_rewrites(self._query)
            else:
                texts = tf.fill([batch, cfg.max_rewrites], "")
                missing = tf.ones([batch], tf.bool)
            if self._online is not None:
                first = tf.where(missing, self._online_rewrites(), texts[:, 0])
                texts = tf.concat([first[:, tf.newaxis], texts[:, 1:]], axis=1)
            tokens = tokenize_op.tokenize(tf.reshape(texts, [-1]),
                                          self._assets.lexical_config.tokenizer_config())
            rw_scores, rw_labels = lexical_ops.search(
                index, tokens, lexical_k, self._servable.fusion.lexical_min_score)
            width = tf.shape(rw_labels)[1]
            rw_scores = tf.reshape(rw_scores, [batch, cfg.max_rewrites, width])
            rw_labels = tf.reshape(rw_labels, [batch, cfg.max_rewrites, width])
            scores, labels, from_query = rewrite_merge.merge(
                lex_scores, lex_labels, rw_scores, rw_labels, tf.shape(lex_labels)[1],
                cfg.rewrite_weight, cfg.combine)
            return scores, labels, tf.where(from_query, tf.constant(-1, tf.int64), labels)

    def _table_rewrites(self, query):
        """[B, max_rewrites] the rewrite table's texts of each query ("" pads) and [B] whether
        the query has no entry."""
        def build():
            init = tf.lookup.TextFileInitializer(
                asset(self._assets.rewrite_table), tf.string, 0, tf.string, 1, delimiter="\t")
            return tf.lookup.StaticHashTable(init, default_value="", name="rewrite_table")
        table = self._once("rewrite_table", build)
        # The key of rewrite table.normalize_query, in-graph.
        key = tf.strings.strip(tf.strings.regex_replace(
            tf.strings.lower(query, encoding="utf-8"), "[\t\n\v\f\r ]+", " "))
        found = table.lookup(key)                                          # [B]
        parts = tf.strings.split(found, sep="\x1f")[:, :self._servable.rewrites.max_rewrites]
        parts = tf.ragged.boolean_mask(parts, tf.strings.length(parts) > 0)
        texts = parts.to_tensor(default_value="",
                                shape=[None, self._servable.rewrites.max_rewrites])
        return texts, tf.equal(found, "")

    def _online_rewrites(self) -> tf.Tensor:
        """[B] the online rewriter's rewrite of each request query: decoded once per request
        (every signature reads the one query placeholder), "" for a query that has a table
        entry (only the others are decoded)."""
        def build():
            with tf.name_scope("online"):
                if self._assets.rewrite_table is not None:
                    _, missing = self._table_rewrites(self._query)
                else:
                    missing = tf.ones_like(self._query, tf.bool)
                decoded = self._online.rewrite(tf.boolean_mask(self._query, missing))
                at = tf.maximum(tf.cumsum(tf.cast(missing, tf.int32)) - 1, 0)
                padded = tf.concat([decoded, [""]], axis=0)  # a gather target when none decoded
                return tf.where(missing, tf.gather(padded, at), "")
        return self._once("online_rewrites", build)

    def _item_embedding(self):
        title = tf.compat.v1.placeholder(tf.string, [None], name="item_title")
        inputs = {"item_title": title}
        features = {"item_tokens": self._tokenize(title)}
        for name in sorted(self._spec.item_features):
            key = f"item_{name}"
            inputs[key], features[key] = _categorical_input(
                key, title, self._assets.item_vocabs[name])
        with tf.name_scope("item_tower"):
            embedding = item_tower(features, self._cfg, self._spec, tf.estimator.ModeKeys.PREDICT)
        return inputs, {"embedding": embedding}
