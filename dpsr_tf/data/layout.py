"""The training layout written by `dpsr prepare`, and its numpy readers.

Directory (docs/data_format.md, "Training layout"):

  layout.json                 the LayoutSpec (this module; counts, the resolved prepare config)
  prepare_report.txt          the validation report (counts, rejected rows by reason, examples)
  vocab.txt                   tokenizer vocabulary (vocabulary mode only)
  items/ids.txt               row -> external item_id (one per line)
  items/titles.txt            row -> title as read (tabs/newlines replaced by spaces)
  items/token_ids.npy         int32 [total item tokens]   title token ids, tokenized once
  items/token_splits.npy      int64 [num_items + 1]       row i = token_ids[splits[i]:splits[i+1]]
  items/features.npy          int32 [num_items, len(item_features)]   categorical ids, 0 = unknown
  items/vocab/<name>.txt      the values of a categorical column; line k holds id k + 1
  users/ids.txt, users/features.npy, users/vocab/<name>.txt     the same for users
  users/history_items.npy     int32 [total]          item rows of each user's positives, in time
  users/history_splits.npy    int64 [num_users + 1]  order (the source of "user_history")
  queries/texts.txt           row -> query text
  queries/texts.txt           rows after the logged queries hold the pseudo-queries
  queries/token_ids.npy       int32, queries/token_splits.npy int64 [num_queries + 1]
  queries/human_negative_items.npy   int32 [P]   human negatives of each TRAIN query (§4.5),
  queries/human_negative_splits.npy  int64 [num_queries + 1]   a ragged table by query row
  interactions/<split>-SSSSS-of-NNNNN.rec   fixed-length interaction records (RECORD_DTYPE);
                              splits "train" (positives only: the train human negatives are in
                              the per-query table), "eval" (everything), "pseudo" (catalog
                              pseudo-queries, one record per pseudo-query and its item),
                              "validation" (VALIDATION_SPLIT: every interaction of a seeded
                              share of the training queries, which train never sees; early
                              stopping and the automatic choices read it; absent from layouts
                              prepared before it or with --validation_fraction=0)

All arrays are little-endian .npy files, read by numpy here and in-graph by
dpsr_tf.data.table_join (tf.io.read_file + decode_raw), so the tables are loaded once per input
pipeline and never embedded in a GraphDef. A split's evaluation requests: dpsr_tf.data.eval_set.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import zlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf import config_json
from dpsr_tf.tokenization import TokenizerConfig

FORMAT_VERSION = 1
LAYOUT_JSON = "layout.json"
REPORT_TXT = "prepare_report.txt"
VOCAB_TXT = "vocab.txt"

ITEM_IDS = "items/ids.txt"
ITEM_TITLES = "items/titles.txt"
ITEM_TOKEN_IDS = "items/token_ids.npy"
ITEM_TOKEN_SPLITS = "items/token_splits.npy"
ITEM_FEATURES = "items/features.npy"
ITEM_VOCAB_DIR = "items/vocab"
USER_IDS = "users/ids.txt"
USER_FEATURES = "users/features.npy"
USER_VOCAB_DIR = "users/vocab"
USER_HISTORY_ITEMS = "users/history_items.npy"
USER_HISTORY_SPLITS = "users/history_splits.npy"
QUERY_TEXTS = "queries/texts.txt"
QUERY_TOKEN_IDS = "queries/token_ids.npy"
QUERY_TOKEN_SPLITS = "queries/token_splits.npy"
QUERY_HUMAN_NEGATIVE_ITEMS = "queries/human_negative_items.npy"
QUERY_HUMAN_NEGATIVE_SPLITS = "queries/human_negative_splits.npy"
INTERACTIONS_DIR = "interactions"
# Record splits: the reported one, and the one carved from the training queries that early
# stopping and every automatic choice read (data/validation_split.py).
EVAL_SPLIT = "eval"
VALIDATION_SPLIT = "validation"

# One interaction = 24 bytes. history_end: the user's history is
# history_items[history_splits[user_row] : history_splits[user_row] + history_end], the user's
# positives strictly before this interaction (the pipeline keeps the last history_length).
RECORD_DTYPE = np.dtype([
    ("query_row", "<i4"),
    ("item_row", "<i4"),
    ("user_row", "<i4"),       # -1: no user
    ("history_end", "<i4"),    # 0 when no user
    ("label_kind", "<i4"),     # schema.LabelKind: 0 click, 1 human positive, 2 human negative
    ("gain", "<f4"),           # graded gain (nDCG); 1 for positives, 0 for negatives by default
])
RECORD_MAGIC = b"DPSRREC1"
RECORD_HEADER_BYTES = 32       # magic, uint32 record bytes, uint32 0, uint64 count, 8 x 0


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
    """Metadata of a training layout (layout.json), loaded by `load_layout_spec`.

    Its JSON form (`layout_spec_to_dict` / `layout_spec_from_dict`) is the layout's layout.json
    and the "layout" section of a model directory's dpsr_config.json alike.

    Attributes:
      layout_dir: absolute path of the layout directory (in JSON: where the layout was written;
        a layout.json read from a directory gets that directory).
      tokenizer_config: the config used to tokenize items AND queries (vocab_file absolute; in
        JSON relative to layout_dir when it lies inside the layout).
      token_id_space: embedding table size for token ids (Tokenizer.id_space).
      num_items, num_users, num_queries: table sizes.
      item_features: categorical item column -> vocabulary size (ids 0..size-1; 0 = unknown).
      user_features: categorical user column -> vocabulary size (0 = unknown / no user).
      history_length: at most this many recent items in "user_history" (0 = none).
      counts: rows read/kept/rejected per file and reason, split sizes, label counts.
      split: how train/eval were split (method, modulus or cutoff).
      eval_min_gain: default threshold of `eval_set.load_eval_set` (relevant iff positive and
        gain >= eval_min_gain).
      record_files: split name -> record file paths relative to layout_dir.
      num_records: split name -> number of interaction records.
      format_version: FORMAT_VERSION of the writer.
      record_checks: record file path -> {"records", "bytes", "crc32"} written by prepare
        (empty for layouts written before it); `verify_record_files` checks them.
      num_logged_queries: the distinct logged queries (the query rows before the
        pseudo-queries); None where not recorded (model directories written before it).
      prepare_config: the resolved PrepareConfig of `dpsr prepare` as a dict (empty where not
        recorded).
    """

    layout_dir: str
    tokenizer_config: TokenizerConfig
    token_id_space: int
    num_items: int
    num_users: int
    num_queries: int
    item_features: Dict[str, int]
    user_features: Dict[str, int]
    history_length: int
    counts: dict
    split: dict
    eval_min_gain: float
    record_files: Dict[str, List[str]]
    num_records: Dict[str, int]
    format_version: int = FORMAT_VERSION
    record_checks: Dict[str, dict] = dataclasses.field(default_factory=dict)
    num_logged_queries: Optional[int] = None
    prepare_config: dict = dataclasses.field(default_factory=dict)

    def path(self, relative: str) -> str:
        """Absolute path of a layout file."""
        return os.path.join(self.layout_dir, relative)

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.record_files)


def layout_spec_to_dict(spec: LayoutSpec) -> dict:
    """The JSON form of a LayoutSpec, the one layout.json and a model directory hold: every field
    (config_json.to_dict, feature dicts in column order), the tokenizer's vocab_file relative to
    layout_dir when the file lies inside the layout."""
    data = config_json.to_dict(spec)
    vocab = spec.tokenizer_config.vocab_file
    if vocab and _inside(vocab, spec.layout_dir):
        data["tokenizer_config"]["vocab_file"] = os.path.relpath(vocab, spec.layout_dir)
    return data


def layout_spec_from_dict(data: dict, source: str = "<dict>", layout_dir: Optional[str] = None,
                          path: str = "") -> LayoutSpec:
    """A LayoutSpec from its JSON form (strict: an unknown or missing field is a ValueError naming
    `source` and `path`, the form's place in the file).

    Args:
      layout_dir: where the layout is now (the directory of the layout.json read); replaces the
        recorded one, so a copied or moved layout reads as itself. None: the recorded one.

    Also reads the forms written before this one: a layout.json without layout_dir (and with
    num_logged_queries and prepare_config beside the fields) and model directories' copies with
    an absolute vocab_file and neither of those two fields.
    """
    data = dict(data)
    if layout_dir is not None:
        data["layout_dir"] = os.path.abspath(layout_dir)
    spec = config_json.from_dict(LayoutSpec, data, source, path)
    tok = spec.tokenizer_config
    if tok.vocab_file:
        tok = dataclasses.replace(tok, vocab_file=os.path.join(spec.layout_dir, tok.vocab_file))
    return dataclasses.replace(spec, tokenizer_config=tok,
                               eval_min_gain=float(spec.eval_min_gain))


def write_layout_spec(spec: LayoutSpec, directory: Optional[str] = None) -> str:
    """Writes `spec` as <directory>/layout.json (default: spec.layout_dir; a writer that builds
    the layout elsewhere first passes that directory) and returns its path."""
    path = os.path.join(directory or spec.layout_dir, LAYOUT_JSON)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(layout_spec_to_dict(spec), f, indent=2, ensure_ascii=False)
        f.write("\n")
    return path


def load_layout_spec(layout_dir: str) -> LayoutSpec:
    """Reads <layout_dir>/layout.json.

    Raises:
      FileNotFoundError: not a layout directory (run `dpsr prepare` first).
      ValueError: a layout written by an incompatible version, or a layout.json that is not one.
    """
    layout_dir = os.path.abspath(layout_dir)
    path = os.path.join(layout_dir, LAYOUT_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {layout_dir} is not a training layout; write one with "
            f"`dpsr prepare --items=... --interactions=... --output={layout_dir}`")
    data = _read_layout_json(layout_dir)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: layout format_version {version}, this code reads "
                         f"{FORMAT_VERSION}; re-run `dpsr prepare`")
    return layout_spec_from_dict(data, path, layout_dir=layout_dir)


def _read_layout_json(layout_dir: str) -> dict:
    path = os.path.join(layout_dir, LAYOUT_JSON)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e}); re-run `dpsr prepare`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a layout (a JSON {type(data).__name__}); re-run "
                         f"`dpsr prepare`")
    return data


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory


def spec_of(layout) -> LayoutSpec:
    """`layout` as a LayoutSpec: as given, or loaded from a layout directory."""
    return layout if isinstance(layout, LayoutSpec) else load_layout_spec(layout)


def feature_columns(layout, kind: str) -> List[str]:
    """Column order of <kind>s/features.npy ("item" or "user"): the order in which the layout's
    own layout.json lists the features.

    A LayoutSpec rebuilt from a model directory's dpsr_config.json (written with sorted keys)
    may list the features in another order; the columns follow the files, so the order is read
    from the layout on disk whenever it is there.

    Raises:
      ValueError: the layout on disk has other features than the spec (another layout).
    """
    spec = spec_of(layout)
    names = list(getattr(spec, f"{kind}_features"))
    try:
        on_disk = list(_read_layout_json(spec.layout_dir)[f"{kind}_features"])
    except (OSError, ValueError, KeyError, TypeError):
        return names
    if sorted(on_disk) != sorted(names):
        raise ValueError(f"{spec.layout_dir}: the layout has {kind} features {on_disk}, the "
                         f"model was trained with {names}: another layout")
    return on_disk


def read_lines(path: str) -> List[str]:
    """The lines of a layout text table (UTF-8, '\\n'-terminated)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    return text.split("\n")[:-1] if text else []


def write_lines(path: str, lines: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def npy_data_offset(path: str) -> Tuple[int, np.dtype, Tuple[int, ...]]:
    """(header bytes, dtype, shape) of a .npy file: where its raw data starts."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # pylint: disable=protected-access
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        return f.tell(), dtype, shape


# ---------------------------------------------------------------------------------------------
# numpy readers (evaluation, indexing, tests).

def load_item_ids(layout) -> List[str]:
    """[num_items] external item ids; index = item row."""
    return read_lines(spec_of(layout).path(ITEM_IDS))


def load_item_id_map(layout) -> Dict[str, int]:
    """external item id -> item row."""
    return {item_id: row for row, item_id in enumerate(load_item_ids(layout))}


@dataclasses.dataclass
class FeatureTable:
    """Rows of items or users as numpy arrays.

    Attributes:
      ids: [N] external ids.
      features: [N, F] int32 categorical ids (0 = unknown), columns in `feature_names` order.
      feature_names: the categorical columns.
      vocabularies: column -> list of values, index = id (index 0 is "" = unknown).
      token_ids, token_splits: items only: [T] int32 and [N + 1] int64 title token ids.
      titles: items only: [N] titles.
    """

    ids: List[str]
    features: np.ndarray
    feature_names: List[str]
    vocabularies: Dict[str, List[str]]
    token_ids: Optional[np.ndarray] = None
    token_splits: Optional[np.ndarray] = None
    titles: Optional[List[str]] = None

    def tokens(self, row: int) -> np.ndarray:
        """[n] int64 token ids of one row."""
        return self.token_ids[self.token_splits[row]:self.token_splits[row + 1]].astype(np.int64)

    def feature(self, name: str) -> np.ndarray:
        """[N] int64 ids of one categorical column."""
        return self.features[:, self.feature_names.index(name)].astype(np.int64)


def _vocabularies(spec: LayoutSpec, vocab_dir: str, names) -> Dict[str, List[str]]:
    return {name: [""] + read_lines(spec.path(f"{vocab_dir}/{name}.txt")) for name in names}


def load_item_table(layout, mmap: bool = False) -> FeatureTable:
    """The item table as numpy (titles, token ids, categorical features, vocabularies)."""
    spec = spec_of(layout)
    mode = "r" if mmap else None
    return FeatureTable(
        ids=load_item_ids(spec),
        features=np.load(spec.path(ITEM_FEATURES), mmap_mode=mode),
        feature_names=feature_columns(spec, "item"),
        vocabularies=_vocabularies(spec, ITEM_VOCAB_DIR, spec.item_features),
        token_ids=np.load(spec.path(ITEM_TOKEN_IDS), mmap_mode=mode),
        token_splits=np.load(spec.path(ITEM_TOKEN_SPLITS)),
        titles=read_lines(spec.path(ITEM_TITLES)),
    )


def load_user_table(layout) -> FeatureTable:
    """The user table as numpy (ids, categorical profile features, vocabularies)."""
    spec = spec_of(layout)
    return FeatureTable(
        ids=read_lines(spec.path(USER_IDS)),
        features=np.load(spec.path(USER_FEATURES)),
        feature_names=feature_columns(spec, "user"),
        vocabularies=_vocabularies(spec, USER_VOCAB_DIR, spec.user_features),
    )


def load_user_histories(layout) -> Tuple[np.ndarray, np.ndarray]:
    """(history_items [T] int32, history_splits [num_users + 1] int64)."""
    spec = spec_of(layout)
    return np.load(spec.path(USER_HISTORY_ITEMS)), np.load(spec.path(USER_HISTORY_SPLITS))


def load_queries(layout) -> List[str]:
    """[num_queries] query texts; index = query row."""
    return read_lines(spec_of(layout).path(QUERY_TEXTS))


def load_query_tokens(layout) -> Tuple[np.ndarray, np.ndarray]:
    """(token_ids [T] int32, token_splits [num_queries + 1] int64)."""
    spec = spec_of(layout)
    return np.load(spec.path(QUERY_TOKEN_IDS)), np.load(spec.path(QUERY_TOKEN_SPLITS))


def record_header(num_records: int) -> bytes:
    return (RECORD_MAGIC + np.uint32(RECORD_DTYPE.itemsize).tobytes() + bytes(4)
            + np.uint64(num_records).tobytes() + bytes(8))


def read_record_file(path: str) -> np.ndarray:
    """[n] RECORD_DTYPE records of one interaction file (checks magic and size)."""
    with open(path, "rb") as f:
        header = f.read(RECORD_HEADER_BYTES)
    if len(header) != RECORD_HEADER_BYTES or header[:8] != RECORD_MAGIC:
        raise ValueError(f"{path}: not a DPSR interaction record file (bad magic)")
    size = int(np.frombuffer(header[8:12], "<u4")[0])
    count = int(np.frombuffer(header[16:24], "<u8")[0])
    if size != RECORD_DTYPE.itemsize:
        raise ValueError(f"{path}: record size {size}, expected {RECORD_DTYPE.itemsize}")
    records = np.fromfile(path, dtype=RECORD_DTYPE, offset=RECORD_HEADER_BYTES)
    if len(records) != count:
        raise ValueError(f"{path}: header says {count} records, file holds {len(records)} "
                         f"(truncated?)")
    return records


def record_file_check(path: str) -> dict:
    """{"records", "bytes", "crc32"} of a record file as it is on disk (what prepare writes into
    layout.json and `verify_record_files` compares)."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        header = f.read(RECORD_HEADER_BYTES)
        crc = zlib.crc32(header, crc)
        size += len(header)
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    count = int(np.frombuffer(header[16:24], "<u8")[0]) if len(header) >= 24 else -1
    return {"records": count, "bytes": size, "crc32": f"{crc:08x}"}


def verify_record_files(layout, splits: Optional[Sequence[str]] = None) -> None:
    """Checks that the interaction record files are whole before training reads them.

    tf.data reads fixed-length records and stops at the end of a file, so a file cut at a record
    boundary (a copy interrupted, a full disk) would train silently on what is left. Each file
    must hold exactly the records its header counts, and, for layouts that list them, match the
    counts, sizes and CRC-32 prepare wrote into layout.json; each split must add up to
    num_records.

    Raises:
      ValueError naming the file, what was expected and what was found, and the fix.
    """
    spec = spec_of(layout)
    fix = "re-run `dpsr prepare` (or copy the layout again)"
    for split in splits if splits is not None else spec.record_files:
        total = 0
        for rel in spec.record_files.get(split, []):
            path = spec.path(rel)
            if not os.path.isfile(path):
                raise ValueError(f"{path}: record file of split {split!r} is missing; {fix}")
            got = record_file_check(path)
            holds = (got["bytes"] - RECORD_HEADER_BYTES) / RECORD_DTYPE.itemsize
            if got["records"] < 0 or holds != got["records"]:
                raise ValueError(
                    f"{path}: the header counts {got['records']:,} records but the file holds "
                    f"{holds:,.2f} ({got['bytes']:,} bytes): it was cut or damaged; {fix}")
            want = spec.record_checks.get(rel)
            if want is not None and want != got:
                raise ValueError(f"{path}: layout.json expects {want}, the file has {got}: it "
                                 f"was changed or damaged after prepare; {fix}")
            total += got["records"]
        if split in spec.num_records and total != spec.num_records[split]:
            raise ValueError(
                f"{spec.layout_dir}: split {split!r} has {total:,} records in its files, "
                f"layout.json says {spec.num_records[split]:,}; {fix}")


def read_records(layout, split: str) -> np.ndarray:
    """[num_records] RECORD_DTYPE: every interaction record of a split, in file order."""
    spec = spec_of(layout)
    if split not in spec.record_files:
        raise ValueError(f"unknown split {split!r}; this layout has {list(spec.record_files)}")
    parts = [read_record_file(spec.path(p)) for p in spec.record_files[split]]
    return np.concatenate(parts) if parts else np.zeros([0], RECORD_DTYPE)


@contextlib.contextmanager
def building(output: str) -> Iterator[str]:
    """A fresh temporary directory beside `output` for a layout writer. When the block ends,
    the finished layout replaces any older one at `output`; when it raises, the temporary
    directory is removed: a failed run never leaves half a layout."""
    tmp = output + f".tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(output):
        shutil.rmtree(output)
    os.rename(tmp, output)
