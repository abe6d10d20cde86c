"""The lexical (BM25) side of an index build: building shards, and searching them in Python.

`dpsr index` (with --lexical, the default) writes, next to each FAISS shard::

    <dir>/shard_00000/lexical.idx     inverted index of the shard's items (search_cc/core/lexical_index.h)

over the same id map (ids.txt): a lexical label is the same line number as a FAISS label, so
one shard's dense and lexical hits fuse in-graph by label. manifest.json gains a `lexical`
section (LexicalManifest): the tokenizer configuration queries must be tokenized with, BM25's
k1 and b, and per-shard file sizes. idf and the average document length are computed over the
whole catalog, so a sharded catalog scores every item exactly as one unsharded index would,
and shard answers are comparable.

What is indexed: each item's title, tokenized by the project's C++ tokenizer with only the
`lexical_features` kinds (words and CJK characters/pairs by default; word pairs and letter
trigrams optional) and a 62-bit hash space (no collisions in practice). The same C++ core scores
in `dpsr evaluate` (LexicalSearcher, through dpsr_tf._lexical) and in the servable (the
Dpsr>LexicalSearch op), so evaluation and serving rank identically.

Once per build it also writes the catalog speller's vocabulary (<dir>/speller_vocab.txt: the
words of the same documents and how many items use each, and the words of the layout's logged
train queries that no item uses; dpsr_tf/tokenization/speller.py).
"""
import os
import time
from typing import Callable, Sequence, Tuple

import numpy as np

from dpsr_tf.tokenization import speller as speller_lib
from dpsr_tf.tokenization.tokenizer import Tokenizer
from dpsr_tf.indexing import index_layout, lexical_manifest

LEXICAL_FILE = lexical_manifest.LEXICAL_FILE
LexicalConfig = lexical_manifest.LexicalConfig
LexicalManifest = lexical_manifest.LexicalManifest
LexicalShardInfo = lexical_manifest.LexicalShardInfo


def _native():
    try:
        from dpsr_tf import _lexical  # built by `make build`: a missing one names the fix
    except ImportError as e:
        raise ImportError("dpsr_tf._lexical is not built: run `make build`") from e
    return _lexical


def build_lexical_shards(directory: str, manifest: index_layout.IndexManifest,
                         item_ids: Sequence[str], documents: Sequence[str],
                         config: LexicalConfig = LexicalConfig(),
                         log: Callable[[str], None] = print,
                         fields_text: str = "title",
                         typed_queries: Sequence[str] = ()) -> LexicalManifest:
    """Writes <directory>/shard_*/lexical.idx over each shard's id map.

    Args:
      directory: an index build directory (its FAISS shards and id maps already written).
      manifest: its manifest.
      item_ids, documents: the catalog, row-aligned: each item's text (its title, or the
        fields of config.fields: item_text.item_documents); every id of the id maps must be
        here.
      config: features and BM25 parameters.
      fields_text: the resolved fields the documents hold (recorded in the manifest).
      typed_queries: the layout's logged train queries: their frequent words join the
        speller's vocabulary as known words (speller.vocabulary).

    Returns:
      the LexicalManifest to store in manifest.json (the caller writes it).
    """
    config.validate()
    if len(item_ids) != len(documents):
        raise ValueError(f"{len(item_ids)} item ids but {len(documents)} documents")
    start = time.time()
    native = _native()
    values, splits = Tokenizer(config.tokenizer_config()).tokenize(list(documents))
    stats = native.CorpusStats.compute(values, splits)
    log(f"lexical index: {stats.num_docs} documents ({fields_text}), {stats.num_terms} "
        f"distinct terms, {stats.avg_doc_length:.1f} features per document")
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    shards = []
    for info in manifest.shards:
        _, ids_file = manifest.shard_paths(directory, info.shard)
        ids = index_layout.read_id_map(ids_file, expected_count=info.num_items)
        try:
            rows = np.array([row_of[i] for i in ids], np.int64)
        except KeyError as e:
            raise ValueError(f"{ids_file}: item id {e.args[0]!r} is not in the catalog") from None
        lengths = (splits[1:] - splits[:-1])[rows]
        shard_splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = (np.concatenate([np.arange(splits[r], splits[r + 1]) for r in rows])
                  if len(rows) else np.zeros(0, np.int64))
        rel = os.path.join(index_layout.shard_dir_name(info.shard), LEXICAL_FILE)
        path = os.path.join(directory, rel)
        native.write_index(path, values[gather.astype(np.int64)], shard_splits, stats,
                           config.k1, config.b)
        index = native.LexicalIndex(path)
        shards.append(LexicalShardInfo(info.shard, rel, index.file_bytes, index.num_terms,
                                       index.num_postings))
        log(f"  shard {info.shard}: {len(rows)} items, {index.num_terms} terms, "
            f"{index.num_postings} postings, {index.file_bytes / 1e6:.1f} MB")
    # The speller's words are the same documents' (every shard's: a query is corrected once,
    # before any shard sees it).
    speller_path = os.path.join(directory, speller_lib.SPELLER_FILE)
    counts = speller_lib.vocabulary(documents, typed_queries)
    num_words = speller_lib.write_vocabulary(speller_path, counts)
    log(f"  speller vocabulary: {num_words} words, {sum(c == 0 for c in counts.values())} of "
        f"them only typed in queries ({speller_lib.SPELLER_FILE})")
    return LexicalManifest(features=tuple(config.features), k1=config.k1, b=config.b,
                           max_tokens=config.max_tokens, text=fields_text,
                           num_docs=int(stats.num_docs), avg_doc_length=stats.avg_doc_length,
                           shards=tuple(shards), build_seconds=round(time.time() - start, 2),
                           speller_file=speller_lib.SPELLER_FILE,
                           speller_bytes=os.path.getsize(speller_path))


class LexicalSearcher:
    """Every lexical shard of a build directory, searched with the C++ core (as served).

    Args:
      directory: an index build directory with a lexical section.
      item_ids: [N] the layout's item ids; results are layout rows.
    """

    def __init__(self, directory: str, item_ids: Sequence[str]):
        manifest = index_layout.read_manifest(directory)
        if manifest.lexical is None:
            raise ValueError(f"{directory} has no lexical index: build it with `dpsr index "
                             "--lexical` (the default)")
        native = _native()
        self.manifest = manifest
        self.tokenizer = Tokenizer(manifest.lexical.config.tokenizer_config())
        row_of = {item_id: row for row, item_id in enumerate(item_ids)}
        self.indexes, self.rows = [], []
        for info, lex in zip(manifest.shards, manifest.lexical.shards):
            _, ids_file = manifest.shard_paths(directory, info.shard)
            ids = index_layout.read_id_map(ids_file, expected_count=info.num_items)
            self.indexes.append(native.LexicalIndex(os.path.join(directory, lex.file)))
            self.rows.append(np.array([row_of[i] for i in ids], np.int64))
        self.num_items = len(item_ids)

    def tokenize(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.tokenize(list(texts))

    def search(self, texts: Sequence[str], k: int,
               min_score: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
        """Global top-k of each text over every shard: ([n, k] scores, [n, k] layout rows),
        best first, -inf / -1 padding."""
        values, splits = self.tokenize(texts)
        all_scores, all_rows = [], []
        for index, rows in zip(self.indexes, self.rows):
            s, lb = index.search(values, splits, k, min_score)
            all_scores.append(s)
            all_rows.append(np.where(lb >= 0, rows[np.maximum(lb, 0)], -1))
        scores = np.concatenate(all_scores, axis=1)
        rows = np.concatenate(all_rows, axis=1)
        # Stable sort by descending score, then lower row (the core's tie rule, shard-free).
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores))[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    def score_all(self, texts: Sequence[str]) -> np.ndarray:
        """[n, N] BM25 of every layout item (0 where no term matches)."""
        values, splits = self.tokenize(texts)
        out = np.zeros((len(texts), self.num_items), np.float32)
        for index, rows in zip(self.indexes, self.rows):
            out[:, rows] = index.score_all(values, splits)
        return out
