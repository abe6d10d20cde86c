"""The encoder list's side of an index build: a pretrained sentence encoder's embeddings of every
item, one inner-product FAISS index per shard (labels = the shard's dense labels), and
optionally the fast query encoder that embeds the queries instead of the encoder.

    manifest = add_encoder_index("/data/index", layout_dir)             # all-MiniLM-L6-v2, titles
    add_encoder_index(index_dir, layout_dir, "/m/ft", query_model_dir="/m/student",
                      index_factory="IVF256,Flat", nprobe=32)
    add_encoder_index(index_dir, layout_dir, "/m/ft", query_model_dir="/m/student",
                      index_factory="IVF256,SQfp16", projected_dimension=64)

Evaluation searches these files as it searches the dense shards
(dpsr_tf/evaluation/served.py open_encoder_index, hybrid.py search_encoder_lists); the servable's
encoder_list stage searches its shard's file in the graph. The items' embeddings are cached
beside the layout (model/pretrained/document_cache.py), so a rebuild, the zero-shot baseline and
a teacher cache of the same encoder embed the titles once. Exact search by default: the
encoder's list is a second opinion over the whole catalog, and a flat index of a catalog of 100k
items answers in milliseconds; an IVF factory searches a few lists instead, for a catalog of
millions or a request as cheap as the towers' (docs/benchmarks.md, "The encoder list"); a
projected dimension searches the items' main directions only, for fewer bytes per item scanned.
"""
import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import index_builder, index_layout
from dpsr_tf.indexing.encoder_manifest import (ENCODER_FILE, EncoderManifest, EncoderShardInfo,
                                               QueryModelInfo)
from dpsr_tf.model import query_student
from dpsr_tf.model.pretrained import document_cache, files, fine_tuned
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder

# Where a fine-tuned encoder given as a model directory is written inside the build.
FINE_TUNED_DIR = "encoder_model"
# WordPiece tokens of a query the encoder list reads, [CLS] and [SEP] included (the items keep
# the encoder's own limit): shoppers' queries fit with room to spare, and a 4 KB query costs
# the encoder a quarter of what its 256 tokens would.
QUERY_MAX_TOKENS = 64


def shard_rows(directory: str, manifest, shard: int, row_of: dict) -> np.ndarray:
    """[n] layout rows of a shard's FAISS labels 0..n-1."""
    _, ids_file = manifest.shard_paths(directory, shard)
    shard_ids = index_layout.read_id_map(ids_file, expected_count=manifest.shards[shard].num_items)
    missing = [i for i in shard_ids if i not in row_of]
    if missing:
        raise ValueError(f"{ids_file}: item {missing[0]!r} ({len(missing)} in all) is not in the "
                         "layout's items; give the --layout_dir the index was built from")
    return np.array([row_of[i] for i in shard_ids], np.int64)


def _exact(factory: str) -> bool:
    return factory.strip().lower() == "flat"


def resolve_factory(factory: str, largest_shard: int) -> str:
    """--encoder_index_factory as built. "auto" scans every item, as exact search does, stored
    as the dense shards below their IVF band are (index_builder.exhaustive_factory of the
    largest shard: "Flat" below 20k items, else "SQfp16", the vectors as 16-bit floats: half
    the bytes read per query, scores within 2^-11 |q| |x|; on Home Depot's 54,667 x 384 list
    the servable's CPU per request 0.72x with the fast query encoder, the served lists equal;
    docs/benchmarks.md, "The encoder list"). It never picks an IVF: what an IVF loses of a
    list depends on the encoder, so that is the user's call. Any other string is built as
    given."""
    if factory.strip().lower() != index_builder.AUTO:
        return factory
    return index_builder.exhaustive_factory(largest_shard)


# Items whose second moment `principal_projection` reads at most: a seeded draw beyond it.
PROJECTION_SAMPLE = 200_000


def principal_projection(vectors: np.ndarray, dimension: int, seed: int = 0) -> np.ndarray:
    """[dimension, d] float32 orthonormal rows: the top eigenvectors of the items' uncentered
    second moment (sum of x x^T over at most PROJECTION_SAMPLE items, a seeded draw).

    Uncentered, so that a query's inner product with an item reads (P q).(P x): the part of
    q.x in the items' main directions. A centered PCA (FAISS's PCAMatrix) subtracts the items'
    mean m from both sides, which adds m.m - q.m - m.P^T P x: a per-item term that reorders a
    query's list."""
    n, d = vectors.shape
    if not 1 <= dimension < d:
        raise ValueError(f"a projected dimension must be in [1, {d - 1}] for {d}-dimensional "
                         f"vectors, got {dimension}")
    rows = (np.arange(n) if n <= PROJECTION_SAMPLE else
            np.sort(np.random.default_rng(seed).choice(n, PROJECTION_SAMPLE, replace=False)))
    moment = np.zeros((d, d), np.float64)
    for start in range(0, len(rows), 65536):
        chunk = np.asarray(vectors[rows[start:start + 65536]], np.float64)
        moment += chunk.T @ chunk
    _, eigenvectors = np.linalg.eigh(moment)   # ascending eigenvalues
    return np.ascontiguousarray(eigenvectors[:, ::-1][:, :dimension].T, np.float32)


def _projected(index, projection: np.ndarray):
    """`index` (over projected vectors) behind the projection: it takes d-dimensional vectors,
    as the servable's query tower makes them, and FAISS (and the servable's search op) project
    each before searching."""
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    dimension, d = projection.shape
    transform = faiss.LinearTransform(d, dimension, False)
    faiss.copy_array_to_vector(projection.ravel(), transform.A)
    transform.is_trained = True
    return faiss.IndexPreTransform(transform, index)


def _shard_indexes(vectors: np.ndarray, shard_rows_list, factory: str, nprobe: int,
                   log: Callable[[str], None], projection: Optional[np.ndarray] = None) -> list:
    """One FAISS index per shard over vectors[rows]: `factory` trained once on every vector
    (seeded sample, as the dense shards), nprobe stored in an IVF's; an empty shard gets an
    empty exact index (nothing to train or find). projection: [r, d] rows the vectors are
    projected onto first (`principal_projection`), each index then taking d-dimensional
    queries through it."""
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    if projection is not None:
        vectors = np.ascontiguousarray(np.asarray(vectors, np.float32) @ projection.T)
    d = vectors.shape[1]
    if _exact(factory):
        trained = None
    else:
        template = index_builder.new_index(factory, d)
        ivf = index_builder.extract_ivf(template)
        if not template.is_trained:
            need = ivf.nlist if ivf is not None else 1
            if len(vectors) < need:
                raise ValueError(f"--encoder_index_factory={factory}: {need} lists need at "
                                 f"least {need} items, the catalog has {len(vectors)}; use "
                                 "fewer lists or Flat")
            sample = index_builder.training_sample(template, len(vectors))
            size = len(sample)
            log(f"encoder list: training {factory} on {size:,} of {len(vectors):,} vectors")
            try:
                template.train(np.ascontiguousarray(vectors[sample]))
            except RuntimeError as e:   # FAISS's own check, e.g. too few points for its PQ
                raise ValueError(f"--encoder_index_factory={factory}: FAISS cannot train it on "
                                 f"{size:,} vectors: {str(e).strip().splitlines()[-1]}") from None
        ivf = index_builder.extract_ivf(template)
        if ivf is not None:
            ivf.nprobe = min(max(1, nprobe), ivf.nlist)
        trained = faiss.serialize_index(template)
    out = []
    for rows in shard_rows_list:
        index = (faiss.IndexFlatIP(d) if trained is None or len(rows) == 0
                 else faiss.deserialize_index(trained))
        index.add(np.ascontiguousarray(vectors[rows]))
        out.append(index if projection is None else _projected(index, projection))
    return out


def _query_students(query_model_dir: str, query_ensemble: Sequence[str], teacher_dir: str,
                    spec, dimension: int) -> list:
    """The build's fast query encoders, each checked against the list (query_student.load)."""
    dirs = ([query_model_dir] if query_model_dir else []) + list(query_ensemble)
    if query_ensemble and not query_model_dir:
        raise ValueError("an ensemble of fast query encoders needs its first one: give "
                         "query_model_dir (--encoder_query_dir=FIRST,SECOND,...)")
    students = [query_student.load(d, teacher_dir, spec, dimension) for d in dirs]
    seen = {}
    for given, student in zip(dirs, students):
        if student.model_dir in seen:
            raise ValueError(f"--encoder_query_dir names {student.model_dir} twice "
                             f"({seen[student.model_dir]} and {given}); an ensemble averages "
                             "students of different seeds")
        seen[student.model_dir] = given
    return students


def add_encoder_index(output_dir: str, layout_dir: str, pretrained_dir: str = "",
                      fields: str = item_text.TITLE,
                      log: Callable[[str], None] = print,
                      query_model_dir: str = "", index_factory: str = index_builder.AUTO,
                      nprobe: int = 64,
                      projected_dimension: int = 0,
                      query_ensemble: Sequence[str] = ()) -> index_layout.IndexManifest:
    """Builds (or rebuilds) the encoder's index of a layout's items in an existing index
    build directory, one file per shard, and records it in the manifest's `encoder` section.

    Args:
      pretrained_dir: a BERT-family encoder's Hugging Face directory ("" = the installed
        all-MiniLM-L6-v2), or a `dpsr train --text_encoder=pretrained` model directory: its
        fine-tuned encoder is written to <output_dir>/encoder_model (fine_tuned.py) and used.
      fields: what each item's document holds (item_text.parse_fields: "title", "all", ...).
      query_model_dir: "" (the encoder embeds queries), or a `dpsr train --item_side=teacher`
        model trained against this encoder's items: its fast query tower embeds the queries
        (model/query_student.py checks it fits).
      query_ensemble: further such models (students of other seeds, each checked alike): a
        query's vector is the mean of every student's unit vector, normalized.
      index_factory: the FAISS factory of each shard's index, inner product ("auto": exhaustive,
        `resolve_factory`; "Flat": exact; e.g. "IVF256,SQfp16" for a large catalog or a cheaper
        search); nprobe: stored in an IVF index (clamped to its lists).
      projected_dimension: 0 (the encoder's own), or fewer: each item stored, and each query
        searched, as its projection onto the items' top principal directions
        (`principal_projection`), so a search reads fewer bytes per item; the factory then
        applies to the projected vectors.

    Raises:
      FileNotFoundError, ValueError: no build or layout there, items that do not match, no
        encoder weights.
    """
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    start = time.monotonic()
    manifest = index_layout.read_manifest(output_dir)
    spec = layout_lib.load_layout_spec(layout_dir)
    ids = layout_lib.read_lines(spec.path(layout_lib.ITEM_IDS))
    if len(ids) != manifest.num_items:
        raise ValueError(f"{layout_dir} has {len(ids)} items but the index build {output_dir} "
                         f"has {manifest.num_items}; give the --layout_dir it was built from")
    index_factory = resolve_factory(index_factory,
                                    max(info.num_items for info in manifest.shards))
    documents = item_text.item_documents(spec, item_text.parse_fields(fields))
    teacher_dir = pretrained_dir or files.default_pretrained_dir()
    if query_model_dir and item_text.parse_fields(fields) != item_text.parse_fields(
            item_text.TITLE):
        raise ValueError(f"--encoder_query_dir={query_model_dir}: a fast query encoder is "
                         "trained against the teacher's title embeddings; build its list with "
                         f"--encoder_fields={item_text.TITLE}, not {fields}")
    if pretrained_dir and fine_tuned.is_model_dir(pretrained_dir):
        log(f"encoder list: writing the fine-tuned encoder of {pretrained_dir}")
        pretrained_dir = fine_tuned.write_encoder_dir(
            pretrained_dir, os.path.join(output_dir, FINE_TUNED_DIR))
    with TextEmbedder(pretrained_dir) as embedder:
        # Whatever would be refused is refused before the catalog is embedded (minutes).
        students = _query_students(query_model_dir, query_ensemble, teacher_dir, spec,
                                   embedder.dimension)
        for student in students:
            log(f"encoder list: queries embedded by {student.checkpoint}"
                + (f" ({len(students)} averaged)" if len(students) > 1 else ""))
        if projected_dimension and not 1 <= projected_dimension < embedder.dimension:
            raise ValueError(f"--encoder_projected_dimension={projected_dimension}: must be 0 "
                             f"(the encoder's own) or in [1, {embedder.dimension - 1}] for "
                             f"{embedder.model.directory}'s {embedder.dimension} dimensions")
        if not _exact(index_factory):
            index_builder.new_index(index_factory,
                                    projected_dimension or embedder.dimension)
        log(f"encoder list: {embedder.model.directory} over the items' {fields}")
        vectors = document_cache.document_embeddings(spec, embedder, documents, log)
        directory = os.path.abspath(embedder.model.directory)
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    shards = []
    projection = None
    if projected_dimension:
        projection = principal_projection(vectors, projected_dimension)
        kept = float(np.sum((np.asarray(vectors[:65536], np.float32) @ projection.T) ** 2)
                     / np.sum(np.asarray(vectors[:65536], np.float32) ** 2))
        log(f"encoder list: items projected onto {projected_dimension} of {vectors.shape[1]} "
            f"directions ({kept:.1%} of their squared length kept)")
    indexes = _shard_indexes(vectors, [shard_rows(output_dir, manifest, info.shard, row_of)
                                       for info in manifest.shards], index_factory, nprobe, log,
                             projection)
    for info, index in zip(manifest.shards, indexes):
        path = os.path.join(output_dir, index_layout.shard_dir_name(info.shard), ENCODER_FILE)
        tmp = path + ".tmp"
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
        shards.append(EncoderShardInfo(shard=info.shard,
                                       file=os.path.relpath(path, output_dir),
                                       file_bytes=os.path.getsize(path)))
    section = EncoderManifest(pretrained_dir=directory, fields=fields,
                              dimension=int(vectors.shape[1]), num_docs=len(ids),
                              shards=tuple(shards),
                              build_seconds=round(time.monotonic() - start, 2),
                              query_model_dir=students[0].model_dir if students else "",
                              query_checkpoint=students[0].checkpoint if students else "",
                              query_ensemble=tuple(QueryModelInfo(s.model_dir, s.checkpoint)
                                                   for s in students[1:]),
                              index_factory=index_factory,
                              projected_dimension=projected_dimension)
    manifest = dataclasses.replace(manifest, encoder=section)
    index_layout.write_manifest(output_dir, manifest)
    shape = f" of {projected_dimension} dimensions" if projected_dimension else ""
    log(f"encoder list: {len(ids):,} items in {len(shards)} shard(s) as {index_factory}{shape}, "
        f"{section.build_seconds:.1f}s")
    return manifest

