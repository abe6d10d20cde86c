"""The on-disk layout of a built item index: manifest, shards, id maps, and the sharding rule.

A build directory (dpsr_tf/indexing/index_builder.py writes it; docs/indexing.md describes it)::

    <dir>/manifest.json                  written last: a directory without it is incomplete
    <dir>/shard_00000/index.faiss        FAISS 1.7.3 index of the shard's items
    <dir>/shard_00000/ids.txt            id map: line i (0-based) is the item id of label i
    <dir>/shard_00001/...

FAISS labels are the row numbers of each shard's id map (0 .. n_shard - 1), so a label maps
to an item id by line number, in Python (read_id_map) or in-graph with
tf.lookup.TextFileInitializer(ids.txt, tf.int64, LINE_NUMBER, tf.string, WHOLE_LINE).

Item i goes to shard shard_of(item_id, num_shards): the first 8 bytes of the BLAKE2b digest
(digest_size=8) of the UTF-8 id, read as a little-endian unsigned integer, modulo num_shards.
The rule depends on the id only, so it is stable across builds, catalog orders and languages.

This module needs neither FAISS nor TensorFlow (the proxy and the CLI read manifests).
"""
import dataclasses
import hashlib
import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf import config_json
from dpsr_tf.indexing.encoder_manifest import EncoderManifest, check_encoder_files
from dpsr_tf.indexing.lexical_manifest import LexicalManifest, check_lexical_files
from dpsr_tf.indexing.manifest_files import check_listed_file

MANIFEST_NAME = "manifest.json"
FORMAT = "dpsr-faiss-index"
FORMAT_VERSION = 1
SHARDING_RULE = "blake2b64_le_mod"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.txt"
METRICS = ("inner_product", "l2")


def shard_dir_name(shard: int) -> str:
    """Folder of one shard inside a build directory: shard_00000, shard_00001, ..."""
    return f"shard_{shard:05d}"


def shard_of(item_id: str, num_shards: int) -> int:
    """The shard of one item id (see the module docstring for the rule)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def shard_assignments(item_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """[N] int32 shard of each item id, shard_of() applied to every id."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards == 1:
        return np.zeros(len(item_ids), np.int32)
    out = np.empty(len(item_ids), np.int32)
    blake2b = hashlib.blake2b
    for i, item_id in enumerate(item_ids):
        digest = blake2b(item_id.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") % num_shards
    return out


def validate_item_ids(item_ids: Sequence[str]) -> List[str]:
    """Checks ids for an id map and returns them as a list of str.

    Raises:
      ValueError: an id that is not a str (or UTF-8 bytes), is empty, holds a line break, or
        repeats an earlier id; the message gives its position and value.
    """
    out = []
    seen = {}
    for i, item_id in enumerate(item_ids):
        if isinstance(item_id, bytes):
            try:
                item_id = item_id.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"item id #{i} {item_id!r} is not valid UTF-8: {e}") from None
        if not isinstance(item_id, str):
            raise ValueError(f"item id #{i} must be a str, got {type(item_id).__name__} "
                             f"{item_id!r}")
        if not item_id:
            raise ValueError(f"item id #{i} is empty; every item needs a non-empty id")
        if "\n" in item_id or "\r" in item_id:
            raise ValueError(f"item id #{i} {item_id!r} contains a line break; id maps hold "
                             "one id per line")
        first = seen.setdefault(item_id, i)
        if first != i:
            raise ValueError(f"item id #{i} {item_id!r} repeats item id #{first}; ids must be "
                             "unique")
        out.append(item_id)
    return out


def write_id_map(path: str, item_ids: Iterable[str]) -> None:
    """Writes an id map: UTF-8, one id per line, line i = FAISS label i."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for item_id in item_ids:
            f.write(item_id)
            f.write("\n")


def read_id_map(path: str, expected_count: Optional[int] = None) -> np.ndarray:
    """Reads an id map.

    Args:
      path: an ids.txt file.
      expected_count: if given, the number of lines the file must have (the shard's size).

    Returns:
      [n] object array of str; element i is the item id of FAISS label i.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not UTF-8, has an empty line, or has the wrong number of lines.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: id map is not UTF-8 ({e})") from None
    if text and not text.endswith("\n"):
        raise ValueError(f"{path}: id map does not end with a newline (truncated?)")
    ids = text.split("\n")[:-1] if text else []
    for i, item_id in enumerate(ids):
        if not item_id:
            raise ValueError(f"{path}:{i + 1}: empty line in id map (label {i} has no id)")
    if expected_count is not None and len(ids) != expected_count:
        raise ValueError(f"{path}: id map has {len(ids)} ids but the manifest says "
                         f"{expected_count}; rebuild the index")
    return np.array(ids, dtype=object)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard of a build directory. Paths are relative to the directory."""
    shard: int
    index_file: str
    ids_file: str
    num_items: int
    index_bytes: int


@dataclasses.dataclass(frozen=True)
class IndexManifest:
    """manifest.json of a build directory (docs/indexing.md lists every field).

    Attributes:
      factory: FAISS index_factory string, e.g. "IVF1024,PQ32x4fs".
      metric: "inner_product" or "l2".
      dimension: embedding dimension d.
      num_items: items in all shards.
      num_shards: S.
      sharding_rule: SHARDING_RULE (the rule of shard_of).
      shards: one ShardInfo per shard, in shard order.
      normalized: whether the builder L2-normalized the embeddings.
      nprobe: the default nprobe stored in IVF indexes (0 for other types).
      ef_search: the default efSearch stored in HNSW indexes (0 for other types).
      train_size: vectors the index was trained on (0 when it needs no training).
      seed: seed of the training sample.
      build_seconds: wall time of the whole build.
      peak_rss_bytes: peak resident memory of the building process (VmHWM: the whole
        process since it started, including the embeddings it holds).
      faiss_version: FAISS version of the builder.
      description: FAISS structure of shard 0, e.g. "IndexIVFPQFastScan".
      lexical: the BM25 index beside the FAISS shards (dpsr_tf/indexing/lexical_manifest.py), or None.
      encoder: a pretrained encoder's exact index of the items beside them
        (dpsr_tf/indexing/encoder_manifest.py), or None.
    """
    factory: str
    metric: str
    dimension: int
    num_items: int
    num_shards: int
    sharding_rule: str
    shards: Tuple[ShardInfo, ...]
    normalized: bool = False
    nprobe: int = 0
    ef_search: int = 0
    train_size: int = 0
    seed: int = 0
    build_seconds: float = 0.0
    peak_rss_bytes: int = 0
    faiss_version: str = ""
    description: str = ""
    lexical: Optional[LexicalManifest] = None
    encoder: Optional[EncoderManifest] = None

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body["lexical"] = self.lexical.to_dict() if self.lexical is not None else None
        body["encoder"] = self.encoder.to_dict() if self.encoder is not None else None
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, **body}
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "IndexManifest":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not JSON ({e})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError(f"{source}: not a {FORMAT} manifest (field 'format' is "
                             f"{body.get('format') if isinstance(body, dict) else None!r})")
        if body.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {body.get('format_version')!r} is not "
                             f"supported (this reader knows {FORMAT_VERSION})")
        body = {k: v for k, v in body.items() if k not in ("format", "format_version")}
        manifest = config_json.from_dict(cls, body, source)
        if manifest.lexical is not None:
            manifest.lexical.check(source)
        if manifest.encoder is not None:
            manifest.encoder.check(source, manifest.num_shards, manifest.num_items)
        manifest._validate(source)
        return manifest

    def _validate(self, source: str) -> None:
        if self.lexical is not None and (
                [s.shard for s in self.lexical.shards] != list(range(self.num_shards))
                or self.lexical.num_docs != self.num_items):
            raise ValueError(f"{source}: the lexical section must list shards "
                             f"0..{self.num_shards - 1} over num_items {self.num_items} items")
        if self.metric not in METRICS:
            raise ValueError(f"{source}: field 'metric' is {self.metric!r}, expected one of "
                             f"{METRICS}")
        if self.sharding_rule != SHARDING_RULE:
            raise ValueError(f"{source}: field 'sharding_rule' is {self.sharding_rule!r}, this "
                             f"reader knows {SHARDING_RULE!r}")
        if self.num_shards != len(self.shards) or self.num_shards < 1:
            raise ValueError(f"{source}: num_shards is {self.num_shards} but {len(self.shards)} "
                             "shards are listed")
        if [s.shard for s in self.shards] != list(range(self.num_shards)):
            raise ValueError(f"{source}: shards must be listed in order 0..{self.num_shards - 1}")
        if sum(s.num_items for s in self.shards) != self.num_items:
            raise ValueError(f"{source}: shard sizes add up to "
                             f"{sum(s.num_items for s in self.shards)}, not num_items "
                             f"{self.num_items}")

    def shard_paths(self, directory: str, shard: int) -> Tuple[str, str]:
        """(index file, id map file) of one shard, as paths under `directory`."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard must be in [0, {self.num_shards}), got {shard}")
        info = self.shards[shard]
        return (os.path.join(directory, info.index_file), os.path.join(directory, info.ids_file))


def read_manifest(directory: str, check_files: bool = True) -> IndexManifest:
    """Reads and validates <directory>/manifest.json.

    Args:
      directory: a build directory.
      check_files: also check that every shard's files exist with the recorded index size.

    Raises:
      FileNotFoundError: no manifest (the build is missing or incomplete).
      ValueError: a malformed manifest or a missing/resized shard file, naming it.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: not an index build directory, or the "
                                "build did not finish (the manifest is written last)")
    with open(path, encoding="utf-8") as f:
        manifest = IndexManifest.from_json(f.read(), source=path)
    if check_files:
        for info in manifest.shards:
            index_file, ids_file = manifest.shard_paths(directory, info.shard)
            check_listed_file(index_file, info.index_bytes, path, f"shard {info.shard} index")
            check_listed_file(ids_file, None, path, f"shard {info.shard} ids")
        if manifest.lexical is not None:
            check_lexical_files(directory, manifest.lexical, path)
        if manifest.encoder is not None:
            check_encoder_files(directory, manifest.encoder, path)
    return manifest


def write_manifest(directory: str, manifest: IndexManifest) -> str:
    """Writes <directory>/manifest.json atomically (temp file + rename); returns its path."""
    path = os.path.join(directory, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    os.replace(tmp, path)
    return path
