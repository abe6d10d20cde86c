"""Training and scoring of the DPR ranker: features of the sessions, pairs, the Estimator.

    data = prepare_ranker_data(sessions_dir, dpsr_model_dir, dpsr_index_dir, model_dir)
    config = train_ranker(data, model_dir, RankerConfig(...), train_steps=4000)
    scores = predict_scores(model_dir, data.eval_sessions, data.eval_features)

A ranker model directory holds ranker_config.json (RankerConfig, with the train moments of the
numeric features), feature_tables.npz/.json (FeatureTables: what the servable's feature graph
reads), features/{train,eval}.npz (the extracted numeric features, a cache keyed by the inputs)
and the Estimator's checkpoints.
"""
import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.ranking import features as features_lib
from dpsr_tf.ranking import model as model_lib
from dpsr_tf.ranking.model import load_config, utf8
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.ranking import target_stats
from dpsr_tf.ranking import user_features as user_lib
from dpsr_tf.tokenization.tokenizer import Tokenizer
from dpsr_tf.indexing import catalog_index, index_layout
from dpsr_tf.indexing.lexical_manifest import LexicalConfig

FEATURES_DIR = "features"


@dataclasses.dataclass
class RankerData:
    """Sessions of both splits with their numeric features ([C, F] float32), their user
    inputs (user_features.SessionUsers) and the tables."""

    layout_spec: object
    titles: list
    tables: features_lib.FeatureTables
    train_sessions: sessions_lib.SessionTable
    eval_sessions: sessions_lib.SessionTable
    train_features: np.ndarray
    eval_features: np.ndarray
    num_heads: int
    train_users: user_lib.SessionUsers = None
    eval_users: user_lib.SessionUsers = None


def query_heads(dpsr_model_dir: str, spec, queries) -> np.ndarray:
    """[S, m, d] DPSR query head embeddings of anonymous queries."""
    cfg, _ = model_dir_lib.load_model_config(dpsr_model_dir)
    tokenizer = Tokenizer(spec.tokenizer_config)
    values, splits = tokenizer.tokenize(list(queries))
    with CheckpointEmbedder(dpsr_model_dir, model_config=cfg, layout_spec=spec) as embedder:
        return embedder.embed_queries(values, splits)


def _lexical_config(index_dir: str) -> LexicalConfig:
    manifest = index_layout.read_manifest(index_dir, check_files=False)
    return manifest.lexical.config if manifest.lexical is not None else LexicalConfig()


def prepare_ranker_data(sessions_dir: str, dpsr_model_dir: str, dpsr_index_dir: str,
                        model_dir: str, layout_dir: Optional[str] = None,
                        retrieved_negatives: int = 0, retrieval_depth: int = 100,
                        history_length: Optional[int] = None, log=print) -> RankerData:
    """Feature tables (saved in model_dir) and the numeric features of both splits (cached in
    model_dir/features/).

    retrieved_negatives: TRAIN sessions gain this many unshown items of the DPSR top
    `retrieval_depth` of their query, labelled below every shown label
    (sessions.add_retrieved_negatives); eval sessions are left as they are. Item statistics
    count the shown candidates only. history_length: clicks kept in each session's history
    (user_features.py; None = the layout's history_length)."""
    info = sessions_lib.read_sessions_info(sessions_dir)
    spec = layout_lib.load_layout_spec(layout_dir or info["layout_dir"])
    train = sessions_lib.load_sessions(sessions_dir, "train")
    evals = sessions_lib.load_sessions(sessions_dir, "eval")
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    item_ids = layout_lib.load_item_ids(spec)
    cfg, _ = model_dir_lib.load_model_config(dpsr_model_dir)
    key = {"sessions_dir": os.path.abspath(sessions_dir),
           "dpsr_checkpoint": model_dir_lib.latest_checkpoint(dpsr_model_dir),
           "dpsr_index_dir": os.path.abspath(dpsr_index_dir),
           "layout_dir": spec.layout_dir, "features": list(features_lib.FEATURE_NAMES),
           "retrieved_negatives": retrieved_negatives, "retrieval_depth": retrieval_depth,
           "item_statistics": "ordered"}
    cache = os.path.join(model_dir, FEATURES_DIR)
    key_path = os.path.join(cache, "key.json")
    if os.path.isfile(key_path) and json.load(open(key_path, encoding="utf-8")) == key:
        log(f"features: reusing {cache}")
        tables = features_lib.FeatureTables.load(model_dir)
        train = _augment(train, tables, dpsr_model_dir, spec, retrieved_negatives,
                         retrieval_depth, log)
        with np.load(os.path.join(cache, "train.npz")) as z_train, \
                np.load(os.path.join(cache, "eval.npz")) as z_eval:
            return _with_users(RankerData(spec, titles, tables, train, evals,
                                          z_train["features"], z_eval["features"],
                                          cfg.num_heads), history_length, log)
    log(f"features: {len(train):,} train and {len(evals):,} eval sessions")
    item_emb = catalog_index.catalog_embeddings_by_row(dpsr_index_dir, item_ids)
    tables = features_lib.build_feature_tables(titles, train.item_rows, train.labels, item_emb,
                                               _lexical_config(dpsr_index_dir))
    tables.save(model_dir)
    train = _augment(train, tables, dpsr_model_dir, spec, retrieved_negatives, retrieval_depth,
                     log)
    out = {}
    extractor = features_lib.FeatureExtractor(tables, cfg.num_heads)
    try:
        earlier = train_own_stats(train, retrieved_negatives)
        for name, table, own in (("train", train, earlier), ("eval", evals, None)):
            heads = query_heads(dpsr_model_dir, spec, table.queries)
            log(f"features of {name}: {table.num_candidates:,} candidates")
            out[name] = extractor.run(table, heads, leave_own_out=False, log=log, own_stats=own)
    finally:
        extractor.close()
    os.makedirs(cache, exist_ok=True)
    for name, feats in out.items():
        np.savez(os.path.join(cache, f"{name}.npz"), features=feats)
    with open(key_path, "w", encoding="utf-8") as f:
        json.dump(key, f, indent=2)
    return _with_users(RankerData(spec, titles, tables, train, evals, out["train"], out["eval"],
                                  cfg.num_heads), history_length, log)


def _with_users(data: RankerData, history_length: Optional[int], log) -> RankerData:
    spec = data.layout_spec
    length = spec.history_length if history_length is None else int(history_length)
    users = user_lib.session_users(spec, {"train": data.train_sessions,
                                          "eval": data.eval_sessions}, length)
    for name, u in users.items():
        if u.unmatched:
            log(f"{name} sessions: {u.unmatched:,} with a user but no logged interaction of "
                f"that user with the query get no history")
    return dataclasses.replace(data, train_users=users["train"], eval_users=users["eval"])


def user_config(spec, history_length: Optional[int] = None) -> dict:
    """RankerConfig fields of the "user" group for a layout (its user columns and items)."""
    names = tuple(layout_lib.feature_columns(spec, "user")) if spec.user_features else ()
    items = tuple(layout_lib.feature_columns(spec, "item")) if spec.item_features else ()
    return {"user_features": names,
            "user_vocab_sizes": tuple(int(spec.user_features[n]) for n in names),
            "item_features": items,
            "item_vocab_sizes": tuple(int(spec.item_features[n]) for n in items),
            "history_length": spec.history_length if history_length is None
            else int(history_length),
            "num_items": int(spec.num_items)}


def train_own_stats(train, retrieved_negatives: int = 0):
    """What FeatureExtractor.run takes out of the TRAIN rows' item statistics: each row sees
    only the sessions before its own (target_stats.py); a leave-one-out mean would hand a
    ranker that tells items apart the row's own label."""
    return target_stats.later_contributions(train, _counted_mask(train, retrieved_negatives),
                                            seed=0)


def _counted_mask(train, per_session) -> np.ndarray:
    """[C] bool: the candidates the item statistics counted (shown ones, not the added
    retrieved negatives, which carry the minimum label of the augmented table)."""
    if per_session <= 0:
        return np.ones(train.num_candidates, bool)
    return train.labels > train.labels.min()


def _augment(train, tables, dpsr_model_dir, spec, per_session, depth, log):
    if per_session <= 0:
        return train
    heads = query_heads(dpsr_model_dir, spec, train.queries)              # [S, m, d]
    emb = tables.item_embeddings
    retrieved = np.zeros([len(train), depth], np.int64)
    for lo in range(0, len(train), 512):
        scores = np.einsum("smd,nd->snm", heads[lo:lo + 512], emb).max(axis=2)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        retrieved[lo:lo + 512] = np.take_along_axis(
            top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)
    label = float(train.labels.min()) - 1.0 if len(train.labels) else -1.0
    out = sessions_lib.add_retrieved_negatives(train, retrieved, per_session, label)
    log(f"train sessions: +{out.num_candidates - train.num_candidates:,} unshown items of the "
        f"DPSR top {depth} as label {label:g}")
    return out


def _user_arrays(config: model_lib.RankerConfig, users, session: np.ndarray) -> dict:
    """"user" [n, U] and "history" [n, history_length] int64 of the sessions `session` [n]."""
    if "user" not in config.feature_groups:
        return {}
    if users.history.shape[1] != config.history_length:
        raise ValueError(f"the sessions' histories hold {users.history.shape[1]} items, the "
                         f"ranker was configured with history_length {config.history_length}")
    return {"user": users.profile[session], "history": users.history[session]}


def _pair_arrays(data: RankerData, table, feats, users, config: model_lib.RankerConfig,
                 seed: int):
    pairs = sessions_lib.build_pairs(table, config.max_pairs_per_session, seed)
    rows = table.item_rows
    titles = utf8(data.titles)
    arrays = {"query": utf8(table.queries)[pairs.session],
              "title_a": titles[rows[pairs.a]],
              "title_b": titles[rows[pairs.b]],
              "numeric_a": feats[pairs.a], "numeric_b": feats[pairs.b]}
    arrays.update(_user_arrays(config, users, pairs.session))
    if "user" in config.feature_groups:
        arrays["item_row_a"], arrays["item_row_b"] = rows[pairs.a], rows[pairs.b]
        cats = user_lib.item_categories(data.layout_spec, config.item_features)
        arrays["item_cats_a"], arrays["item_cats_b"] = cats[rows[pairs.a]], cats[rows[pairs.b]]
    return arrays, pairs.label



def _spec_of(array: np.ndarray) -> tf.TensorSpec:
    dtype = (tf.string if array.dtype == object
             else tf.int64 if np.issubdtype(array.dtype, np.integer) else tf.float32)
    return tf.TensorSpec([None] + list(array.shape[1:]), dtype)


def _input_fn(arrays, labels, batch_size, seed, training):
    """Batches from numpy through a generator: the arrays never become graph constants (a
    from_tensor_slices dataset would embed every title of every pair in the GraphDef, which
    the Estimator writes out as text and into each checkpoint's meta graph)."""
    n = len(labels)
    keys = sorted(arrays)
    signature = ({k: _spec_of(arrays[k]) for k in keys}, tf.TensorSpec([None], tf.float32))

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(n) if training else np.arange(n)
            for lo in range(0, n, batch_size):
                idx = order[lo:lo + batch_size]
                if training and len(idx) < batch_size:
                    break
                yield ({k: arrays[k][idx] for k in keys}, labels[idx].astype(np.float32))
            if not training:
                return

    def fn():
        ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
        return ds.prefetch(2)
    return fn


def write_config(model_dir: str, config: model_lib.RankerConfig) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, model_lib.CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json())


def make_estimator(model_dir: str, config: model_lib.RankerConfig,
                   save_checkpoints_steps: int = 1000) -> tf.estimator.Estimator:
    run = tf.estimator.RunConfig(model_dir=model_dir, tf_random_seed=config.seed,
                                 save_checkpoints_steps=save_checkpoints_steps,
                                 log_step_count_steps=200, keep_checkpoint_max=2)
    return tf.estimator.Estimator(model_lib.model_fn, config=run, params={"config": config})


def train_ranker(data: RankerData, model_dir: str, config: model_lib.RankerConfig,
                 train_steps: int, log=print) -> model_lib.RankerConfig:
    """Trains the ranker on the TRAIN sessions' pairs (TF_CONFIG clusters as for DPSR) and
    returns the config with the feature moments it was trained with."""
    feats = data.train_features
    std = feats.std(axis=0)
    config = dataclasses.replace(
        config, feature_mean=tuple(float(x) for x in feats.mean(axis=0)),
        feature_std=tuple(float(x) if x > 1e-6 else 1.0 for x in std))
    config.validate()
    write_config(model_dir, config)
    arrays, labels = _pair_arrays(data, data.train_sessions, feats, data.train_users, config,
                                  config.seed)
    eval_arrays, eval_labels = _pair_arrays(data, data.eval_sessions, data.eval_features,
                                            data.eval_users, config, config.seed)
    log(f"train-ranker: {len(labels):,} train pairs, {len(eval_labels):,} eval pairs, "
        f"{train_steps} steps of {config.batch_size}")
    estimator = make_estimator(model_dir, config)
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(_input_fn(arrays, labels, config.batch_size, config.seed, True),
                               max_steps=train_steps),
        tf.estimator.EvalSpec(_input_fn(eval_arrays, eval_labels, 1024, config.seed, False),
                              steps=None, throttle_secs=60, start_delay_secs=0))
    return config


def predict_scores(model_dir: str, data: RankerData, table, feats,
                   checkpoint: Optional[str] = None, users=None) -> np.ndarray:
    """[C] float32 tower scores of every candidate (Estimator.predict).

    users: the table's SessionUsers (default: data's of the eval split, for the eval table)."""
    config = load_config(model_dir)
    session = table.session_of_candidate()
    queries = utf8(table.queries)[session]
    arrays = {"query": queries, "title": utf8(data.titles)[table.item_rows],
              "numeric": feats.astype(np.float32)}
    if "user" in config.feature_groups:
        if users is None:
            users = data.eval_users if table is data.eval_sessions else data.train_users
        arrays.update(_user_arrays(config, users, session))
        arrays["item_row"] = table.item_rows
        arrays["item_cats"] = user_lib.item_categories(data.layout_spec, config.item_features)[table.item_rows]
    est = make_estimator(model_dir, config)
    keys = sorted(arrays)
    sig = {k: _spec_of(arrays[k]) for k in keys}

    def batches():
        for lo in range(0, len(queries), 1024):
            yield {k: arrays[k][lo:lo + 1024] for k in keys}

    fn = lambda: tf.data.Dataset.from_generator(batches, output_signature=sig)
    out = np.fromiter((p["score"] for p in est.predict(fn, checkpoint_path=checkpoint,
                                                         yield_single_examples=True)),
                      np.float32, count=len(queries))
    return out
