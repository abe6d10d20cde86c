"""Offline index building: item embeddings + item ids -> FAISS index shards on disk.

    config = IndexBuildConfig(factory="IVF1024,PQ32x4fs", num_shards=2, nprobe=32)
    manifest = build_index(embeddings, item_ids, "/data/index", config)

The output layout (manifest.json, shard_XXXXX/index.faiss, shard_XXXXX/ids.txt) and the
sharding rule are defined in dpsr_tf/indexing/index_layout.py; docs/indexing.md explains the factory
strings. The index files are FAISS 1.7.3 files (faiss-cpu wheel), readable by the
Dpsr>FaissSearch op (dpsr_tf/search/faiss_ops.py), which links the same FAISS version.

The index is trained once, on a seeded sample of the whole catalog, and every shard starts
from a copy of that trained index, so all shards share one coarse quantizer and codebook.
"""
import dataclasses
import math
import os
import re
import resource
import shutil
import time
from typing import Optional, Sequence, Tuple

from absl import logging
import numpy as np

from dpsr_tf.indexing import index_layout

try:
    import faiss  # pylint: disable=g-import-not-at-top
except ImportError as _e:  # pragma: no cover - faiss-cpu is pinned in requirements.txt
    faiss = None
    _FAISS_IMPORT_ERROR = _e


def _require_faiss():
    if faiss is None:
        raise ImportError("dpsr_tf.indexing.index_builder needs the faiss-cpu wheel (pinned 1.7.3 in "
                          "requirements.txt): run tools/bootstrap.sh") from _FAISS_IMPORT_ERROR
    return faiss


AUTO = "auto"
AUTO_FP16_FROM = 20_000
AUTO_IVF_FROM = 100_000


def auto_factory(num_items: int, dim: int) -> str:
    """The factory string "auto" stands for, for a shard of num_items vectors of size dim.

    Below AUTO_IVF_FROM items an exhaustive index: at that size scanning every item costs
    little more than IVF, which loses part of the top 1,000 (docs/results.md, "What the index
    costs"). Below AUTO_FP16_FROM items it is "Flat" (exact; the vectors fit in the CPU's
    caches, so half-size codes save nothing); from there it is "SQfp16", the vectors as 16-bit
    floats: the scan reads half the memory, which at that size is what it waits on (Home Depot,
    54,667 x 128: the default servable's CPU per request 0.63x of Flat's, the served hybrid's
    recalls equal to Flat's to five places; docs/benchmarks.md, "An exhaustive index's
    storage"). Rounding to 16 bits moves a score by at most about 2^-11 |q| |x|, so only
    near-ties reorder.
    Above it IVF with 8-bit scalar codes (SQ8: d bytes per item, scanned by the op's own kernel,
    search_cc/core/ivf_sq8_scan.cc) and nlist = the power of two nearest 2 * sqrt(num_items)
    (1M items -> 2048, 15M -> 8192, 100k -> 512), so that the stored nprobe of 64 scans a few
    percent of the shard. SQ8 finds more of the exact top 1,000 than PQ for less CPU, and with
    the scan that cheap, scoring the centroids is a large share of a query, so fewer, larger
    lists than FAISS's 4 sqrt(n) cost less at the same recall (docs/benchmarks.md, "FAISS
    indexing and search"). `dim` does not enter the rule (SQ8 codes fit every d).
    """
    if num_items < AUTO_IVF_FROM:
        return exhaustive_factory(num_items)
    nlist = 2 ** int(round(math.log2(2.0 * math.sqrt(num_items))))
    nlist = min(max(nlist, 64), 65536)
    return f"IVF{nlist},SQ8"


def exhaustive_factory(num_items: int) -> str:
    """The index that scans all of a shard's num_items vectors: "Flat" below AUTO_FP16_FROM,
    else "SQfp16" (`auto_factory`'s docstring says why)."""
    return "Flat" if num_items < AUTO_FP16_FROM else "SQfp16"


@dataclasses.dataclass(frozen=True)
class IndexBuildConfig:
    """How to build an item index.

    Attributes:
      factory: FAISS index_factory string: "Flat" (exact), "IVF1024,PQ32" (IVF-PQ),
        "IVF1024,PQ32x4fs" (IVF-PQ fast scan, 4-bit codes), "HNSW32", "OPQ32,IVF4096,PQ32"...
        (docs/indexing.md), or "auto" (`auto_factory`: sized by the shard's item count).
      metric: "inner_product" (DPSR scores) or "l2".
      num_shards: S; item i goes to shard index_layout.shard_of(id_i, S).
      train_size: vectors sampled (seeded, without replacement) to train the index; 0 = auto:
        max(65536, 64 * nlist) capped at the catalog size. Ignored for indexes that need no
        training (Flat, HNSW).
      seed: seed of the training sample.
      add_batch_size: vectors added per FAISS add() call (bounds the extra memory of a copy).
      nprobe: default nprobe stored in IVF indexes (clamped to nlist); searches may override
        it per call. 0 leaves FAISS's default (1).
      ef_search: default efSearch stored in HNSW indexes (and HNSW coarse quantizers); 0
        leaves FAISS's default (16). Searches may override it per call.
      ef_construction: HNSW efConstruction; 0 leaves FAISS's default (40).
      normalize: L2-normalize the embeddings before indexing (inner product = cosine).
      num_threads: OpenMP threads for training and adding; 0 = FAISS's default (all cores).
      refine_k_factor: for refine factories ("...,Refine(SQ8)", "...,RFlat"): the stored
        IndexRefine k_factor, i.e. k * refine_k_factor candidates of the base index are
        re-ranked with the refine codes (FAISS's own default, 1, re-ranks only the k it
        returns). Ignored for other indexes. Default 8: a smaller factor caps the recall of a
        fast-scan top 1,000 well below it (docs/benchmarks.md, "FAISS built for this CPU,
        fast-scan + refine").
    """
    factory: str = "IVF1024,PQ32x4fs"
    metric: str = "inner_product"
    num_shards: int = 1
    train_size: int = 0
    seed: int = 0
    add_batch_size: int = 65536
    nprobe: int = 64
    ef_search: int = 64
    ef_construction: int = 0
    normalize: bool = False
    num_threads: int = 0
    refine_k_factor: float = 8.0

    def validate(self) -> None:
        """Raises ValueError naming the bad field, its value and what is allowed."""
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ValueError(f"factory must be a FAISS index_factory string such as 'Flat', "
                             f"'IVF1024,PQ32x4fs' or 'HNSW32', got {self.factory!r}")
        if self.metric not in index_layout.METRICS:
            raise ValueError(f"metric must be one of {index_layout.METRICS}, got "
                             f"{self.metric!r}")
        for name in ("num_shards", "add_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "nprobe", "ef_search", "ef_construction", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1.0 <= self.refine_k_factor <= 64.0:
            raise ValueError(f"refine_k_factor must be in [1, 64] (candidates re-ranked per "
                             f"result), got {self.refine_k_factor}")


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM (Linux; peak since exec) or ru_maxrss
    (which on Linux also counts a parent's peak before fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _metric(name: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if name == "inner_product" else faiss.METRIC_L2


def extract_ivf(index):
    """The IndexIVF inside `index`, or None: like faiss.try_extract_index_ivf (which unwraps
    IndexPreTransform and IndexIDMap) but also through IndexRefine's base index, which FAISS
    1.7.3's does not (a refine index would otherwise keep nprobe 1)."""
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexRefine):
        node = faiss.downcast_index(node.base_index)
    return faiss.try_extract_index_ivf(node)


def _hnsw_nodes(index):
    """The HNSW indexes inside `index` (the index itself, or an IVF coarse quantizer)."""
    out = []
    node = faiss.downcast_index(index)
    while isinstance(node, faiss.IndexPreTransform):
        node = faiss.downcast_index(node.index)
    if isinstance(node, faiss.IndexHNSW):
        out.append(node)
    ivf = extract_ivf(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            out.append(quantizer)
    return out


def disable_polysemous_training(index) -> None:
    """index_factory turns on polysemous training for 8-bit PQ codes: a slow reordering of the
    codebook (minutes) that only polysemous search (Hamming filtering, unused here) needs."""
    node = faiss.downcast_index(index)
    while isinstance(node, faiss.IndexPreTransform):
        node = faiss.downcast_index(node.index)
    if isinstance(node, faiss.IndexRefine):  # base and refine codes ("...,Refine(PQ32)")
        disable_polysemous_training(node.base_index)
        disable_polysemous_training(node.refine_index)
        return
    if isinstance(node, (faiss.IndexPQ, faiss.IndexIVFPQ)):
        node.do_polysemous_training = False


def _describe(index) -> str:
    node = faiss.downcast_index(index)
    names = []
    while isinstance(node, faiss.IndexPreTransform):
        names.append(type(node).__name__)
        node = faiss.downcast_index(node.index)
    names.append(type(node).__name__)
    return "(".join(names) + ")" * (len(names) - 1)


# A size of 0 in a factory string ("IVF0", "PQ0", "PQ8x0", "HNSW0", "OPQ0", "RR0"): FAISS
# parses each of these and then crashes the process (a segfault or a division by zero) when the
# index is trained, filled or searched, so it never gets the chance to raise.
_ZERO_SIZE = re.compile(r"[A-Za-z_(]0+(?![0-9])")


def new_index(factory: str, d: int, metric: str = "inner_product"):
    """An empty (untrained) FAISS index of a factory string (ValueError with examples when
    FAISS cannot parse it, when a size in it is 0, or when it maps its own ids: the labels are
    the shard's rows)."""
    faiss = _require_faiss()
    zero = _ZERO_SIZE.search(factory)
    if zero:
        raise ValueError(f"invalid FAISS factory string {factory!r}: every size in it must be "
                         f"at least 1, got {factory[:zero.end()].split(',')[-1]!r} (FAISS "
                         "would crash on it). Examples: 'Flat', 'IVF1024,PQ32x4fs', 'HNSW32'")
    try:
        index = faiss.index_factory(d, factory, _metric(metric))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else str(e)
        raise ValueError(f"invalid FAISS factory string {factory!r} for dimension {d}: "
                         f"{first}. Examples: 'Flat', 'IVF1024,PQ32x4fs', 'HNSW32'") from None
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap):
        raise ValueError(f"factory {factory!r}: IDMap is not supported, FAISS labels are "
                         "the row numbers of each shard's id map (drop 'IDMap,')")
    return index


def training_sample(template, n: int, train_size: int = 0, seed: int = 0) -> np.ndarray:
    """[t] sorted rows of n vectors to train an untrained index on: a seeded draw of
    train_size of them (0: max(65536, 64 x the IVF's lists)), at most n."""
    ivf = extract_ivf(template)
    size = min(train_size or max(65536, 64 * (ivf.nlist if ivf else 0)), n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _check_inputs(embeddings, item_ids) -> Tuple[np.ndarray, list]:
    if not hasattr(embeddings, "shape") or len(embeddings.shape) != 2:
        raise ValueError(f"embeddings must be a [num_items, dim] array, got shape "
                         f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
    n, d = embeddings.shape
    if n < 1 or d < 1:
        raise ValueError(f"embeddings must hold at least one vector of dimension >= 1, got "
                         f"shape {embeddings.shape}")
    if len(item_ids) != n:
        raise ValueError(f"{len(item_ids)} item ids for {n} embeddings; give one id per row")
    ids = index_layout.validate_item_ids(item_ids)
    for start in range(0, n, 1 << 20):  # chunked: embeddings may be a np.memmap
        chunk = np.asarray(embeddings[start:start + (1 << 20)])
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"embedding row {row} (item id {ids[row]!r}) has a non-finite "
                             "value; fix the embedding model or drop the item")
    return embeddings, ids


def _rows(embeddings, rows, normalize: bool) -> np.ndarray:
    x = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    if normalize:
        if not x.flags.writeable or np.shares_memory(x, embeddings):
            x = x.copy()
        faiss.normalize_L2(x)
    return x


def _prepare_dir(output_dir: str, overwrite: bool) -> None:
    manifest = os.path.join(output_dir, index_layout.MANIFEST_NAME)
    if os.path.exists(manifest):
        if not overwrite:
            raise FileExistsError(f"{manifest} exists: pass overwrite=True (--overwrite) to "
                                  "replace that index, or choose another directory")
        os.remove(manifest)  # first, so a failed rebuild never looks complete
    os.makedirs(output_dir, exist_ok=True)
    for name in os.listdir(output_dir):
        if name.startswith("shard_") and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name))


def write_shard(output_dir: str, shard: int, index, shard_ids: Sequence[str]
                ) -> index_layout.ShardInfo:
    """Writes one shard's FAISS index and id map under output_dir (the layout of
    index_layout) and returns its manifest entry."""
    faiss = _require_faiss()
    shard_dir = os.path.join(output_dir, index_layout.shard_dir_name(shard))
    os.makedirs(shard_dir, exist_ok=True)
    index_file = os.path.join(shard_dir, index_layout.INDEX_FILE)
    ids_file = os.path.join(shard_dir, index_layout.IDS_FILE)
    faiss.write_index(index, index_file)
    index_layout.write_id_map(ids_file, shard_ids)
    return index_layout.ShardInfo(
        shard=shard, index_file=os.path.relpath(index_file, output_dir),
        ids_file=os.path.relpath(ids_file, output_dir), num_items=len(shard_ids),
        index_bytes=os.path.getsize(index_file))


def build_index(embeddings: np.ndarray, item_ids: Sequence[str], output_dir: str,
                config: IndexBuildConfig = IndexBuildConfig(),
                overwrite: bool = False) -> index_layout.IndexManifest:
    """Builds the FAISS index shards of a catalog and writes them under `output_dir`.

    Args:
      embeddings: [num_items, dim] floating point item embeddings (float32 preferred; a
        np.memmap works, it is read in batches). Row i belongs to item_ids[i].
      item_ids: [num_items] unique, non-empty item id strings without line breaks.
      output_dir: build directory (created); see dpsr_tf/indexing/index_layout.py for its layout.
      config: an IndexBuildConfig.
      overwrite: replace an existing build in output_dir.

    Returns:
      The IndexManifest also written to <output_dir>/manifest.json (written last).

    Raises:
      ValueError: bad config, bad embeddings (shape, dtype, non-finite row) or bad ids
        (empty, duplicate, line break); the message names the row or id.
      FileExistsError: output_dir holds a build and overwrite is False.
    """
    _require_faiss()
    start = time.monotonic()
    config.validate()
    embeddings, ids = _check_inputs(embeddings, item_ids)
    n, d = embeddings.shape
    if config.factory.strip().lower() == AUTO:
        config = dataclasses.replace(
            config, factory=auto_factory(-(-n // max(1, config.num_shards)), d))
        logging.info("index factory auto -> %s (%d items, %d shard(s), d = %d)", config.factory,
                     n, config.num_shards, d)
    template = new_index(config.factory, d, config.metric)
    _prepare_dir(output_dir, overwrite)

    previous_threads = faiss.omp_get_max_threads()
    if config.num_threads:
        faiss.omp_set_num_threads(config.num_threads)
    try:
        ivf = extract_ivf(template)
        disable_polysemous_training(template)
        for node in _hnsw_nodes(template):
            if config.ef_construction:
                node.hnsw.efConstruction = config.ef_construction
        train_size = 0
        if not template.is_trained:
            sample = training_sample(template, n, config.train_size, config.seed)
            train_size = len(sample)
            logging.info("training %s on %d of %d vectors (seed %d)", config.factory,
                         train_size, n, config.seed)
            t0 = time.monotonic()
            template.train(_rows(embeddings, sample, config.normalize))
            logging.info("trained in %.1f s", time.monotonic() - t0)
        ivf = extract_ivf(template)
        refine = faiss.downcast_index(template)
        if isinstance(refine, faiss.IndexRefine):
            refine.k_factor = config.refine_k_factor
        if ivf is not None and config.nprobe:
            ivf.nprobe = min(config.nprobe, ivf.nlist)
        for node in _hnsw_nodes(template):
            if config.ef_search:
                node.hnsw.efSearch = config.ef_search

        # Every shard starts from a copy of the trained index (serialize/deserialize: FAISS
        # 1.7.3's clone_index does not know every type, e.g. IVF-PQ fast scan).
        trained = faiss.serialize_index(template)
        assignment = index_layout.shard_assignments(ids, config.num_shards)
        shards = []
        description = _describe(template)
        for shard in range(config.num_shards):
            rows = (np.arange(n) if config.num_shards == 1 else
                    np.flatnonzero(assignment == shard))
            if len(rows) == 0:
                logging.warning("shard %d of %d is empty (%d items): consider fewer shards",
                                shard, config.num_shards, n)
            index = faiss.deserialize_index(trained)
            t0 = time.monotonic()
            for begin in range(0, len(rows), config.add_batch_size):
                batch = rows[begin:begin + config.add_batch_size]
                if config.num_shards == 1:  # contiguous slice: no gather copy
                    batch = slice(int(batch[0]), int(batch[-1]) + 1)
                index.add(_rows(embeddings, batch, config.normalize))
                done = min(begin + config.add_batch_size, len(rows))
                logging.info("shard %d/%d: added %d/%d vectors (%.0f vectors/s)", shard + 1,
                             config.num_shards, done, len(rows),
                             done / max(time.monotonic() - t0, 1e-9))
            shards.append(write_shard(output_dir, shard, index, [ids[i] for i in rows]))
            del index
    finally:
        faiss.omp_set_num_threads(previous_threads)

    hnsw = _hnsw_nodes(template)
    manifest = index_layout.IndexManifest(
        factory=config.factory,
        metric=config.metric,
        dimension=int(d),
        num_items=int(n),
        num_shards=config.num_shards,
        sharding_rule=index_layout.SHARDING_RULE,
        shards=tuple(shards),
        normalized=config.normalize,
        nprobe=int(ivf.nprobe) if ivf is not None else 0,
        ef_search=int(hnsw[0].hnsw.efSearch) if hnsw else 0,
        train_size=int(train_size),
        seed=config.seed,
        build_seconds=round(time.monotonic() - start, 3),
        peak_rss_bytes=_peak_rss_bytes(),
        faiss_version=faiss.__version__,
        description=description)
    index_layout.write_manifest(output_dir, manifest)
    logging.info("built %s: %d items in %d shard(s) in %.1f s, peak RSS %.2f GiB", output_dir,
                 n, config.num_shards, manifest.build_seconds,
                 manifest.peak_rss_bytes / 2**30)
    return manifest


def load_shard(directory: str, shard: int = 0, mmap: bool = False,
               manifest: Optional[index_layout.IndexManifest] = None):
    """Loads one shard with the faiss-cpu wheel (offline checks, benchmarks).

    Returns:
      (faiss.Index, [n] object array of item ids, label i -> ids[i]).
    """
    _require_faiss()
    manifest = manifest or index_layout.read_manifest(directory)
    index_file, ids_file = manifest.shard_paths(directory, shard)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(index_file, flags)
    ids = index_layout.read_id_map(ids_file, expected_count=manifest.shards[shard].num_items)
    return index, ids
