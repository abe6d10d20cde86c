"""`dpsr export`: a trained model + a built index -> one versioned SavedModel servable.

    export_servable(model_dir, index_dir, "/models/dpsr")   # -> /models/dpsr/<version>/

The servable (dpsr_tf/export/servable_graph.py) tokenizes the query, runs the query tower, searches the
index with every head, merges and maps labels to item ids, all in one graph; when the index
build has a lexical index (and ServableConfig.hybrid), it also searches it and fuses both lists. The index, id maps
and vocabularies are SavedModel assets; the directory appears atomically (written under a
temporary name, then renamed), so a model server polling the base path never sees half a version.
"""
import dataclasses
import json
import os
import shutil
import time
from typing import Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.indexing import index_layout
from dpsr_tf.indexing.catalog_index import EMBEDDING_IDS_FILE, EMBEDDINGS_FILE
from dpsr_tf.export import graph_lookup
from dpsr_tf.export.servable_graph import AssetPaths, ServableConfig, ServableGraph
from dpsr_tf.export.servable_graph import asset as asset_tensor, run_time_path
from dpsr_tf.export.warmup import write_warmup_requests

SERVABLE_INFO = "dpsr_servable.json"  # in assets.extra/: what was exported, for ops


def shard_base_path(export_base: str, shard: int, num_shards: int) -> str:
    """The base path of one shard's servable: export_base itself, or export_base_shard<i>."""
    return export_base if num_shards == 1 else f"{export_base.rstrip('/')}_shard{shard}"


def _next_version(base: str) -> int:
    versions = [int(d) for d in (os.listdir(base) if os.path.isdir(base) else []) if d.isdigit()]
    return max(versions, default=0) + 1


def _stage(src: str, staging: str, name: str) -> str:
    """A uniquely named copy (a hard link when possible) of an asset in the staging folder."""
    dst = os.path.join(staging, name)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def _stage_assets(spec, cfg, index_file: str, ids_file: str, staging: str,
                  lexical_file: Optional[str] = None, lexical_config=None) -> AssetPaths:
    tok = spec.tokenizer_config
    personalized = cfg.personalization in ("profile", "history")
    return AssetPaths(
        lexical_index=(_stage(lexical_file, staging, "lexical.idx") if lexical_file else None),
        lexical_config=lexical_config if lexical_file else None,
        index=_stage(index_file, staging, "index.faiss"),
        shard_ids=_stage(ids_file, staging, "shard_item_ids.txt"),
        all_item_ids=_stage(spec.path(layout_lib.ITEM_IDS), staging, "all_item_ids.txt"),
        tokenizer_vocab=(_stage(tok.vocab_file, staging, "tokenizer_vocab.txt")
                         if tok.vocab_file else None),
        user_vocabs={n: _stage(spec.path(f"{layout_lib.USER_VOCAB_DIR}/{n}.txt"), staging,
                               f"user_vocab_{n}.txt")
                     for n in spec.user_features} if personalized else {},
        item_vocabs={n: _stage(spec.path(f"{layout_lib.ITEM_VOCAB_DIR}/{n}.txt"), staging,
                               f"item_vocab_{n}.txt") for n in spec.item_features},
        graph_queries=(graph_lookup.stage_graph_queries(spec, staging)
                       if cfg.tower == "searchgcn" else None),
    )


def stage_rewrite_table(path: str, staging: str):
    """(the asset file, its number of queries): one line per query key of a rewrite table,
    key<TAB>rewrites joined by \x1f in table order (what the servable's hash table reads)."""
    from dpsr_tf.rewriting import table as table_lib  # pylint: disable=import-outside-toplevel
    rows = table_lib.read_table(path)
    asset = os.path.join(staging, "rewrite_table.txt")
    with open(asset, "w", encoding="utf-8") as f:
        for key, rewrites in rows.items():
            f.write(key + "\t" + "\x1f".join(r for r, _ in rewrites) + "\n")
    return asset, len(rows)


def _signature_defs(signatures, defaults):
    build = tf.compat.v1.saved_model.utils.build_tensor_info
    out = {}
    for name, (inputs, outputs) in signatures.items():
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={k: build(v) for k, v in inputs.items()},
            outputs={k: build(v) for k, v in outputs.items()},
            method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        # Optional inputs, as TF Serving reads them: a request may leave these out.
        for alias, value in defaults.get(name, {}).items():
            sig.defaults[alias].CopyFrom(tf.make_tensor_proto(value))
        out[name] = sig
    return out


def feedback_table(index_dir: str, ids_file: str) -> np.ndarray:
    """[labels of the shard, d] float32: the index build's item embedding of each FAISS label of
    the shard (the vectors the index holds), the table a dense feedback servable averages.

    Raises:
      ValueError: the build has no saved item embeddings, or they lack an item of the shard.
    """
    path = os.path.join(index_dir, EMBEDDINGS_FILE)
    if not os.path.exists(path):
        raise ValueError(f"dense feedback needs the index build's item embeddings: {path} is "
                         "missing; rebuild the index with `dpsr index`, or export with "
                         "--dense_feedback=off")
    embeddings = np.load(path, mmap_mode="r")
    row_of = {item_id: row for row, item_id in enumerate(index_layout.read_id_map(
        os.path.join(index_dir, EMBEDDING_IDS_FILE), expected_count=embeddings.shape[0]))}
    labels = index_layout.read_id_map(ids_file)
    missing = [i for i in labels if i not in row_of]
    if missing:
        raise ValueError(f"{path} has no embedding of item {missing[0]!r} of shard {ids_file} "
                         f"({len(missing)} missing); rebuild the index with `dpsr index`")
    return np.asarray(embeddings[np.array([row_of[i] for i in labels], np.int64)], np.float32)


def _sample_queries(spec, count: int = 8) -> List[str]:
    try:
        queries = layout_lib.load_queries(spec)
    except (OSError, ValueError):
        queries = []
    return [q for q in queries[:count] if q] or ["warm up"]


def export_servable(model_dir: str, index_dir: str, export_base: str, *, shard: int = 0,
                    version: Optional[int] = None, servable: ServableConfig = ServableConfig(),
                    checkpoint: Optional[str] = None,
                    warmup_queries: Optional[Sequence[str]] = None,
                    layout_dir: Optional[str] = None, ranker_dir: Optional[str] = None,
                    rerank_n: int = 100, fusion_choice: Optional[dict] = None,
                    rewrite_table: Optional[str] = None,
                    online_rewriter: Optional[str] = None) -> str:
    """Writes <export_base>/<version>/ and returns its path.

    Args:
      model_dir: trained model directory (dpsr_config.json + checkpoints).
      index_dir: an index build directory (`dpsr index`; dpsr_tf/indexing/index_layout.py).
      export_base: the servable's base path; versions are numbered folders inside it.
      shard: which index shard this servable holds.
      version: the version number; default one more than the newest in export_base.
      servable: request limits and search settings.
      checkpoint: a checkpoint prefix; default the newest in model_dir.
      warmup_queries: queries for assets.extra/tf_serving_warmup_requests (default: a few
        training queries of the layout).
      layout_dir: the training layout (vocabularies, item ids); default the one the model was
        trained on.
      ranker_dir: a `dpsr train-ranker` model: adds the `rerank` and `retrieve_rerank`
        signatures (dpsr_tf/export/rerank_stage.py), which re-rank the top `rerank_n` items.

    Raises:
      ValueError: index and model disagree (dimension, metric), bad shard or version.
      FileExistsError: the version already exists.
    """
    cfg, spec = model_dir_lib.load_model_config(model_dir)
    if layout_dir:
        spec = dataclasses.replace(spec, layout_dir=os.path.abspath(layout_dir))
    ckpt = model_dir_lib.latest_checkpoint(model_dir, checkpoint)
    manifest = index_layout.read_manifest(index_dir)
    if manifest.dimension != cfg.embedding_dim:
        raise ValueError(f"{index_dir}: index dimension {manifest.dimension} != the model's "
                         f"embedding_dim {cfg.embedding_dim}; rebuild it with `dpsr index "
                         f"--model_dir={model_dir}`")
    if manifest.metric != "inner_product":
        raise ValueError(f"{index_dir}: metric {manifest.metric!r}; DPSR scores are inner "
                         "products, rebuild the index with --metric=inner_product")
    if (rewrite_table or online_rewriter) and servable.rewrites.combine == "capped" \
            and manifest.num_shards > 1:
        # The cap divides by the query's and each rewrite's best BM25 score, which one shard
        # does not know: shards would scale the same item differently and the proxy's merge by
        # score would compare unlike values.
        raise ValueError(f"--rewrite_combine=capped needs the best scores over the whole "
                         f"catalog; {index_dir} has {manifest.num_shards} shards: use max or "
                         f"sum, or a one-shard index")
    if ranker_dir and servable.dense_feedback.enabled and manifest.num_shards > 1:
        # retrieve_rerank is one round on each shard: its heads would move toward that shard's
        # own first hits, and the proxy would merge answers to different queries.
        raise ValueError(f"dense feedback with a ranker needs a one-shard index; {index_dir} has "
                         f"{manifest.num_shards} shards: export with --dense_feedback=off, or "
                         "without --ranker_dir")
    index_file, ids_file = manifest.shard_paths(index_dir, shard)
    version = _next_version(export_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    target = os.path.join(export_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose another --version")
    os.makedirs(export_base, exist_ok=True)
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    staging = tmp + "-assets"
    for path in (tmp, staging):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(staging)
    start = time.monotonic()
    try:
        lexical = manifest.lexical if servable.hybrid else None
        lexical_file = (os.path.join(index_dir, lexical.shards[shard].file) if lexical else None)
        assets = _stage_assets(spec, cfg, index_file, ids_file, staging, lexical_file,
                               lexical.config if lexical else None)
        if servable.spelling and manifest.lexical is not None and manifest.lexical.speller_file:
            assets = dataclasses.replace(assets, speller_vocab=_stage(
                os.path.join(index_dir, manifest.lexical.speller_file), staging,
                "speller_vocab.txt"))
        rewrite_count = None
        if rewrite_table:
            if lexical is None:
                raise ValueError(f"rewrites search the lexical index: {index_dir} has none (or "
                                 "--nohybrid was given); build it with `dpsr index --lexical`")
            asset, rewrite_count = stage_rewrite_table(rewrite_table, staging)
            assets = dataclasses.replace(assets, rewrite_table=asset)
        if online_rewriter and lexical is None:
            raise ValueError(f"the online rewriter's rewrites search the lexical index: "
                             f"{index_dir} has none (or --nohybrid was given); build it with "
                             "`dpsr index --lexical`")
        with tf.Graph().as_default() as graph:
            online = None
            if online_rewriter:
                from dpsr_tf.rewriting.online import OnlineRewriter  # pylint: disable=import-outside-toplevel
                from dpsr_tf.rewriting.train import UNITS_TXT  # pylint: disable=import-outside-toplevel
                units = _stage(os.path.join(online_rewriter, UNITS_TXT), staging,
                               "rewriter_units.txt")
                units = asset_tensor(units)
                online = OnlineRewriter(online_rewriter, units_init_path=units,
                                        units_path=run_time_path(units, "rewriter_units_path"))
            servable_graph = ServableGraph(cfg, spec, assets, servable, online_rewriter=online)
            stage = None
            if ranker_dir:
                from dpsr_tf.export.rerank_stage import RerankStage  # pylint: disable=import-outside-toplevel
                stage = RerankStage(servable_graph, ranker_dir, cfg, spec, assets, rerank_n)
            saver = tf.compat.v1.train.Saver(
                [v for v in tf.compat.v1.global_variables()
                 if not any(part.owns(v) for part in (stage, online, servable_graph)
                            if part is not None)],
                sharded=True)
            with tf.compat.v1.Session(graph=graph) as sess:
                model_dir_lib.restore(saver, sess, ckpt)
                table = servable_graph.feedback_table
                if table is not None:   # its initializer fed the build's embeddings
                    sess.run(table.initializer,
                             {table.initial_value: feedback_table(index_dir, ids_file)})
                if stage is not None:
                    stage.restore(sess)
                if online is not None:
                    online.restore(sess)
                builder = tf.compat.v1.saved_model.Builder(tmp)
                builder.add_meta_graph_and_variables(
                    sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                    signature_def_map=_signature_defs(servable_graph.signatures,
                                                      servable_graph.defaults),
                    assets_collection=tf.compat.v1.get_collection(
                        tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
                    # Local variables: asset paths read at run time (run_time_path).
                    main_op=tf.group(tf.compat.v1.tables_initializer(),
                                     tf.compat.v1.local_variables_initializer()),
                    strip_default_attrs=True)
                builder.save()
        queries = list(warmup_queries) if warmup_queries else _sample_queries(spec)
        write_warmup_requests(tmp, [{"query": np.array([q.encode("utf-8")])} for q in queries])
        info = {
            "model_dir": os.path.abspath(model_dir), "checkpoint": ckpt,
            "index_dir": os.path.abspath(index_dir), "shard": shard,
            "num_shards": manifest.num_shards, "index_factory": manifest.factory,
            "num_items": manifest.shards[shard].num_items,
            "hybrid": lexical is not None,
            "ranker_dir": os.path.abspath(ranker_dir) if ranker_dir else None,
            "rerank_n": rerank_n if ranker_dir else None,
            "model": cfg.to_dict(), "servable": dataclasses.asdict(servable),
            "fusion_choice": fusion_choice,
            "rewrite_table": (os.path.abspath(rewrite_table) if rewrite_table else None),
            "rewrite_queries": rewrite_count,
            "online_rewriter": ({"rewriter_dir": os.path.abspath(online_rewriter),
                                 "checkpoint": online.checkpoint, "decoding": "greedy"}
                                if online is not None else None),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(tmp, "assets.extra", SERVABLE_INFO), "w") as f:
            json.dump(info, f, indent=2)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("exported %s (shard %d of %d, %d items) in %.1fs", target, shard,
                 manifest.num_shards, manifest.shards[shard].num_items, time.monotonic() - start)
    return target


def export_all_shards(model_dir: str, index_dir: str, export_base: str,
                      **kwargs) -> List[str]:
    """One servable per index shard: export_base (1 shard) or export_base_shard<i>."""
    manifest = index_layout.read_manifest(index_dir)
    return [export_servable(model_dir, index_dir,
                            shard_base_path(export_base, s, manifest.num_shards), shard=s,
                            **kwargs) for s in range(manifest.num_shards)]
