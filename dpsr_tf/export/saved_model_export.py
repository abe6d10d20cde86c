"""`dpsr export`: a trained model + a built index -> one versioned SavedModel servable.

    export_servable(model_dir, index_dir, "/models/dpsr")   # -> /models/dpsr/<version>/

The servable is one graph composed of stages (dpsr_tf/export/servable_graph.py,
dpsr_tf/export/stages/): each stage stages the files it reads as SavedModel assets, adds its ops,
and fills its own variables after the model's checkpoint is restored. The directory appears
atomically (written under a temporary name, then renamed), so a model server polling the base
path never sees half a version; assets.extra/dpsr_servable.json records what it holds.
"""
import dataclasses
import json
import os
import shutil
import time
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.indexing import index_layout
from dpsr_tf.export.servable_graph import ServableConfig, ServableGraph, prepare_stages
from dpsr_tf.export.servable_info import SERVABLE_INFO
from dpsr_tf.export.stages.base import ExportSource
from dpsr_tf.export.warmup import write_warmup_requests


def shard_base_path(export_base: str, shard: int, num_shards: int) -> str:
    """The base path of one shard's servable: export_base itself, or export_base_shard<i>."""
    return export_base if num_shards == 1 else f"{export_base.rstrip('/')}_shard{shard}"


def _next_version(base: str) -> int:
    versions = [int(d) for d in (os.listdir(base) if os.path.isdir(base) else []) if d.isdigit()]
    return max(versions, default=0) + 1


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
        signatures (dpsr_tf/export/stages/rerank.py), which re-rank the top `rerank_n` items.

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
    version = _next_version(export_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    target = os.path.join(export_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose another --version")
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    staging = tmp + "-assets"
    source = ExportSource(model_dir=model_dir, index_dir=index_dir, model_config=cfg,
                          layout_spec=spec, manifest=manifest, shard=shard, servable=servable,
                          staging=staging, ranker_dir=ranker_dir, rerank_n=rerank_n,
                          rewrite_table=rewrite_table, online_rewriter=online_rewriter)
    start = time.monotonic()
    made_base = not os.path.isdir(export_base)
    try:
        for path in (tmp, staging):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(staging)
        stages = prepare_stages(source)
        with tf.Graph().as_default() as graph:
            servable_graph = ServableGraph(cfg, spec, stages, servable)
            saver = tf.compat.v1.train.Saver(
                [v for v in tf.compat.v1.global_variables() if not servable_graph.owns(v)],
                sharded=True)
            with tf.compat.v1.Session(graph=graph) as sess:
                model_dir_lib.restore(saver, sess, ckpt)
                servable_graph.restore(sess)
                builder = tf.compat.v1.saved_model.Builder(tmp)
                builder.add_meta_graph_and_variables(
                    sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                    signature_def_map=_signature_defs(servable_graph.signatures,
                                                      servable_graph.defaults),
                    assets_collection=tf.compat.v1.get_collection(
                        tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
                    # Local variables: asset paths read at run time (stages.base.run_time_path).
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
            "hybrid": source.lexical is not None,
            "stages": servable_graph.stage_names,
            "ranker_dir": None, "rerank_n": None,
            "model": cfg.to_dict(), "servable": dataclasses.asdict(servable),
            "fusion_choice": fusion_choice,
            "rewrite_table": (os.path.abspath(rewrite_table) if rewrite_table else None),
            "rewrite_queries": None, "online_rewriter": None,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        info.update(servable_graph.info())
        with open(os.path.join(tmp, "assets.extra", SERVABLE_INFO), "w") as f:
            json.dump(info, f, indent=2)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if made_base and not os.listdir(export_base):   # a failed first export leaves nothing
            os.rmdir(export_base)
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
