"""A teacher's embeddings of the catalog and of the training queries, computed once and cached
beside the layout (`dpsr train --teacher_dir`, docs/training.md "Distillation").

    cache = ensure_teacher_cache("/m/teacher", "/data/layout")   # computes, or reuses
    cache.directory, cache.num_items, cache.num_query_rows, cache.heads, cache.dim

The teacher is either a model directory written by `dpsr train` on this layout (any text
encoder; typically --text_encoder=pretrained, fine-tuned) or a pretrained encoder directory in
the Hugging Face layout (config.json, vocab.txt, model.safetensors), used as it ships.
Written under <layout_dir>/teacher_embeddings/<key>/, where <key> hashes the teacher's
checkpoint (or weights file) and the layout's identity, so every student trained on the layout
with that teacher reuses one computation:

  items.f16         [num_items, dim] float16  the item tower over every item (layout row order)
  queries.f16       [num_query_rows, heads, dim] float16 the query tower over the query rows of
                    the train and pseudo record splits (text alone: no user features), L2 rows;
                    at most max_queries of them (train rows first, then a seeded draw of
                    pseudo rows)
  query_index.i32   [num_queries] int32  layout query row -> row of queries.f16 (-1 = none:
                    validation and eval queries are never embedded, nothing fits on them)
  meta.json         the key, the shapes, seconds spent

float16 halves the files and the training process's memory; cosines keep about 3 decimals,
far finer than the softened targets need.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.pretrained import document_cache
from dpsr_tf.model.pretrained import files as pretrained_files
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder

FLAG = "--teacher_dir"
CACHE_DIR = "teacher_embeddings"
ITEMS_FILE = "items.f16"
QUERIES_FILE = "queries.f16"
QUERY_INDEX_FILE = "query_index.i32"
META_FILE = "meta.json"
# The record splits whose queries the student is trained on (never validation or eval).
QUERY_SPLITS = ("train", "pseudo")


@dataclasses.dataclass(frozen=True)
class TeacherCache:
    """A computed cache directory and its shapes (meta.json)."""

    directory: str
    num_items: int
    num_queries: int        # the layout's query table
    num_query_rows: int     # rows of queries.f16
    heads: int
    dim: int
    computed: bool          # computed by this call (False: reused)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


def _log_default(message: str) -> None:
    logging.info("%s", message)


def teacher_kind(teacher_dir: str) -> str:
    """"model" (a `dpsr train` model directory) or "pretrained" (a Hugging Face encoder).

    Raises:
      ValueError: no such directory, or neither kind (the message says what to pass).
    """
    if not teacher_dir or not os.path.isdir(teacher_dir):
        raise ValueError(f"{FLAG}={teacher_dir!r}: no such directory; pass the model directory "
                         "of a finished `dpsr train` on this layout (e.g. one trained with "
                         "--text_encoder=pretrained) or a pretrained encoder directory "
                         "(config.json, vocab.txt, model.safetensors)")
    if os.path.isfile(os.path.join(teacher_dir, model_dir_lib.CONFIG_FILE)):
        return "model"
    if os.path.isfile(os.path.join(teacher_dir, pretrained_files.CONFIG_FILE)):
        return "pretrained"
    raise ValueError(f"{FLAG}={teacher_dir}: neither {model_dir_lib.CONFIG_FILE} (a model "
                     f"directory written by `dpsr train`) nor {pretrained_files.CONFIG_FILE} "
                     "(a pretrained encoder directory) is in it; pass one of those")


def teacher_width(teacher_dir: str) -> int:
    """The width of the teacher's embeddings: a model directory's embedding_dim, an encoder's
    hidden size (ValueError as teacher_kind for a bad directory)."""
    if teacher_kind(teacher_dir) == "model":
        return int(model_dir_lib.load_model_config(teacher_dir)[0].embedding_dim)
    return int(pretrained_files.read_pretrained(teacher_dir, with_weights=False)
               .config.hidden_size)


def _file_identity(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, int(st.st_mtime)]


def _check_model_teacher(teacher_dir: str, spec) -> str:
    """The teacher model's latest checkpoint prefix, after checking it fits this layout."""
    try:
        _, saved = model_dir_lib.load_model_config(teacher_dir)
        checkpoint = model_dir_lib.latest_checkpoint(teacher_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{FLAG}={teacher_dir}: {e}; train the teacher first (`dpsr train "
                         f"--model_dir={teacher_dir} --text_encoder=pretrained ...`)") from None
    for key in ("num_items", "num_queries", "token_id_space", "item_features"):
        if getattr(saved, key) != getattr(spec, key):
            raise ValueError(f"{FLAG}={teacher_dir} was trained on the layout {saved.layout_dir} "
                             f"({key}={getattr(saved, key)}), not on --layout_dir="
                             f"{spec.layout_dir} ({key}={getattr(spec, key)}); train the "
                             "teacher on this layout")
    return checkpoint


def cache_key(teacher_dir: str, spec, max_queries: int = 0) -> dict:
    """What identifies a teacher cache: the teacher's checkpoint (or weights file) and the
    layout (its path and layout.json, which holds its sizes and record counts).

    Raises:
      ValueError: a bad teacher directory (the message names the missing file and the fix).
    """
    kind = teacher_kind(teacher_dir)
    if kind == "model":
        checkpoint = _check_model_teacher(teacher_dir, spec)
        weights = _file_identity(checkpoint + ".index")
    else:
        try:
            pretrained_files.read_pretrained(teacher_dir, with_weights=False)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{FLAG}={teacher_dir}: {e}") from None
        checkpoint = ""
        weights = _file_identity(os.path.join(teacher_dir, pretrained_files.WEIGHTS_FILE))
    with open(spec.path(layout_lib.LAYOUT_JSON), "rb") as f:
        layout_hash = hashlib.sha1(f.read()).hexdigest()
    return {"teacher_dir": os.path.abspath(teacher_dir), "kind": kind,
            "checkpoint": checkpoint, "weights": weights,
            "layout_dir": os.path.abspath(spec.layout_dir), "layout_json_sha1": layout_hash,
            "query_splits": [s for s in QUERY_SPLITS if s in spec.record_files],
            "max_queries": int(max_queries)}


def cache_dir(key: dict) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(key["layout_dir"], CACHE_DIR, digest)


def read_cache(directory: str, computed: bool = False) -> Optional[TeacherCache]:
    """The TeacherCache in directory, or None when it is not (completely) there."""
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    return TeacherCache(directory, int(meta["num_items"]), int(meta["num_queries"]),
                        int(meta["num_query_rows"]), int(meta["heads"]), int(meta["dim"]),
                        computed)


def _split_rows(spec, split: str) -> np.ndarray:
    if split not in spec.record_files:
        return np.zeros([0], np.int64)
    return np.unique(layout_lib.read_records(spec, split)["query_row"].astype(np.int64))


def training_query_rows(spec, max_queries: int = 0) -> np.ndarray:
    """[Q] int64 sorted distinct query rows the teacher embeds: those of the train records,
    then those of the pseudo records, without any row that also has a validation or eval
    record.

    max_queries > 0 caps Q: every train row first (the first max_queries of them, seeded,
    if they alone exceed it), then a seeded draw of pseudo rows. A row left out gives its
    examples no distillation term.
    """
    held = np.concatenate([_split_rows(spec, s) for s in
                           (layout_lib.VALIDATION_SPLIT, layout_lib.EVAL_SPLIT)])
    logged = np.setdiff1d(_split_rows(spec, "train"), held)
    pseudo = np.setdiff1d(np.setdiff1d(_split_rows(spec, "pseudo"), held), logged)
    if max_queries > 0:
        rng = np.random.default_rng(0)
        if len(logged) > max_queries:
            logged = rng.choice(logged, max_queries, replace=False)
        room = max_queries - len(logged)
        if len(pseudo) > room:
            pseudo = rng.choice(pseudo, room, replace=False)
    return np.sort(np.concatenate([logged, pseudo])).astype(np.int64)


def _query_tokens(spec, rows: np.ndarray):
    ids, splits = layout_lib.load_query_tokens(spec)
    starts, ends = splits[rows], splits[rows + 1]
    out_splits = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(ends - starts, out=out_splits[1:])
    positions = np.repeat(starts - out_splits[:-1], ends - starts) + np.arange(out_splits[-1])
    return np.asarray(ids)[positions].astype(np.int64), out_splits


def _embed_with_model(teacher_dir: str, checkpoint: str, spec, rows: np.ndarray, log):
    """(items [N, d], queries [Q, m, d]) from a teacher model directory's towers."""
    cfg, saved = model_dir_lib.load_model_config(teacher_dir)
    teacher_spec = dataclasses.replace(saved, layout_dir=spec.layout_dir)
    table = layout_lib.load_item_table(spec, mmap=True)
    texts = cfg.text_encoder == "pretrained"
    queries = layout_lib.load_queries(spec) if texts else None
    chunk = 2048

    def progress(done: int, total: int, seconds: float) -> None:
        log(f"teacher embeddings: {done:,}/{total:,} items ({done / max(seconds, 1e-9):.0f}/s)")
    with CheckpointEmbedder(teacher_dir, checkpoint, cfg, teacher_spec) as embedder:
        items = embedder.embed_catalog(table, chunk=chunk, progress=progress)
        out = np.zeros([len(rows), cfg.num_heads, cfg.embedding_dim], np.float32)
        # Shortest texts first: a pretrained encoder pads each batch to its longest text.
        order = np.argsort([len(queries[r]) for r in rows], kind="stable") if texts else \
            np.arange(len(rows))
        start = time.monotonic()
        for lo in range(0, len(rows), chunk):
            hi = min(len(rows), lo + chunk)
            part = rows[order[lo:hi]]
            ids, splits = _query_tokens(spec, part)
            out[order[lo:hi]] = embedder.embed_queries(
                ids, splits, query_rows=part,
                texts=[queries[r] for r in part] if texts else None)
            log(f"teacher embeddings: {hi:,}/{len(rows):,} training queries "
                f"({hi / max(time.monotonic() - start, 1e-9):.0f}/s)")
    return items, out


def _embed_with_encoder(teacher_dir: str, spec, rows: np.ndarray, log):
    """(items [N, H], queries [Q, 1, H]) from a pretrained encoder as it ships: titles and
    query texts through the sentence encoder (mean pooling, L2)."""
    table = layout_lib.load_item_table(spec, mmap=True)
    queries = layout_lib.load_queries(spec)
    with TextEmbedder(teacher_dir) as embedder:
        log(f"teacher embeddings: {spec.num_items:,} item titles")
        # The zero-shot baseline's cache of the same titles (`dpsr evaluate --zero_shot`).
        items = document_cache.document_embeddings(spec, embedder, list(table.titles), log)
        log(f"teacher embeddings: {len(rows):,} training queries")
        out = embedder.embed([queries[r] for r in rows], log=log)
    return items, out[:, None, :]


def ensure_teacher_cache(teacher_dir: str, layout_dir: str, max_queries: int = 0,
                         log: Callable[[str], None] = _log_default) -> TeacherCache:
    """The teacher's cache for this layout: reused when one with the same key exists, else
    computed (with progress lines through `log`) and written atomically. max_queries: see
    training_query_rows (0 = every training query).

    Raises:
      ValueError: a bad teacher directory, or a layout directory that cannot be written.
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    key = cache_key(teacher_dir, spec, max_queries)
    directory = cache_dir(key)
    cached = read_cache(directory)
    if cached is not None:
        log(f"teacher embeddings: reusing {directory} ({cached.num_items:,} items, "
            f"{cached.num_query_rows:,} training queries)")
        return cached
    start = time.monotonic()
    rows = training_query_rows(spec, max_queries)
    log(f"teacher embeddings: computing with {teacher_dir} for {spec.num_items:,} items and "
        f"{len(rows):,} training queries (once per teacher and layout) into {directory}")
    if key["kind"] == "model":
        items, queries = _embed_with_model(teacher_dir, key["checkpoint"], spec, rows, log)
    else:
        items, queries = _embed_with_encoder(teacher_dir, spec, rows, log)
    seconds = round(time.monotonic() - start, 1)
    write_cache(directory, items, queries, rows, spec.num_queries,
                {"key": key, "seconds": seconds, "written": time.time()})
    log(f"teacher embeddings: written to {directory} in {seconds} s")
    return read_cache(directory, computed=True)


def write_cache(directory: str, items: np.ndarray, queries: np.ndarray, rows: np.ndarray,
                num_queries: int, extra: dict) -> None:
    """Writes a cache directory atomically (a temporary sibling renamed into place).

    Args:
      items: [N, d] float32 teacher item embeddings in layout row order.
      queries: [Q, m, d] float32 teacher query heads of the query rows `rows`.
      rows: [Q] int64 layout query rows.
      num_queries: the layout's query table size.
      extra: more meta.json fields (the key, timings).

    Raises:
      ValueError: mismatched shapes, or a directory that cannot be written.
    """
    if items.ndim != 2 or queries.ndim != 3 or items.shape[1] != queries.shape[2] or \
            len(rows) != len(queries):
        raise ValueError(f"teacher cache: items {items.shape}, queries {queries.shape} and "
                         f"{len(rows)} query rows do not fit together")
    index = np.full(num_queries, -1, np.int32)
    index[rows] = np.arange(len(rows), dtype=np.int32)
    tmp = f"{directory}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{FLAG}: cannot write the teacher's cache ({e}); make "
                         f"{os.path.dirname(directory)} writable") from None
    items.astype("<f2").tofile(os.path.join(tmp, ITEMS_FILE))
    queries.astype("<f2").tofile(os.path.join(tmp, QUERIES_FILE))
    index.astype("<i4").tofile(os.path.join(tmp, QUERY_INDEX_FILE))
    meta = dict(extra, num_items=int(len(items)), num_queries=int(num_queries),
                num_query_rows=int(len(rows)), heads=int(queries.shape[1]),
                dim=int(queries.shape[2]), dtype="float16 little-endian")
    with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    if os.path.isdir(directory):   # a half-written directory of an interrupted run
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def load_arrays(cache: TeacherCache) -> dict:
    """{"items": [N, d], "queries": [Q, m, d] float16, "query_index": [num_queries] int32}."""
    return {"items": np.fromfile(cache.path(ITEMS_FILE), "<f2").reshape(
                cache.num_items, cache.dim),
            "queries": np.fromfile(cache.path(QUERIES_FILE), "<f2").reshape(
                cache.num_query_rows, cache.heads, cache.dim),
            "query_index": np.fromfile(cache.path(QUERY_INDEX_FILE), "<i4")}


def wait_for_cache(teacher_dir: str, layout_dir: str, max_queries: int, timeout_s: float,
                   poll_s: float = 5.0) -> TeacherCache:
    """A cluster's non-chief task: the cache the chief computes (ValueError after timeout_s)."""
    spec = layout_lib.load_layout_spec(layout_dir)
    directory = cache_dir(cache_key(teacher_dir, spec, max_queries))
    deadline = time.monotonic() + timeout_s
    while True:
        cached = read_cache(directory)
        if cached is not None:
            return cached
        if time.monotonic() > deadline:
            raise ValueError(f"{FLAG}: no teacher cache in {directory} from the chief after "
                             f"{timeout_s:.0f} s")
        time.sleep(poll_s)
