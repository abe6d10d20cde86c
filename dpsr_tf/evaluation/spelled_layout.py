"""A layout whose queries are spell-corrected as a spelling servable corrects them.

A servable with a speller (dpsr_tf/tokenization/speller.py) corrects each query before the
query tower and BM25 see it. To score what users get, `dpsr evaluate --hybrid`, the fusion
choice of `dpsr export` and `dpsr crossval --hybrid` read the layout through this view: a
temporary directory of symbolic links to the layout's files, except the query texts and their
tokens, which hold the corrected queries tokenized by the layout's own tokenizer. Every other
table (records, items, users, human negatives) is the layout's, so request order, relevant
items and query rows are unchanged; only what the towers read of each query differs.

    with spelled_layout(layout_dir, index_dir) as view:   # view is None: no speller
        evaluate_hybrid(model_dir, index_dir, view or layout_dir)
"""
import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import index_layout
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.tokenization.speller import Speller
from dpsr_tf.tokenization.tokenizer import Tokenizer


def index_speller(index_dir: str) -> Optional[Speller]:
    """The speller of an index build's vocabulary, or None for a build without one."""
    manifest = index_layout.read_manifest(index_dir, check_files=False)
    if manifest.lexical is None or not manifest.lexical.speller_file:
        return None
    return Speller.load(os.path.join(index_dir, manifest.lexical.speller_file))


def layout_of(model_dir: str, layout_dir: Optional[str] = None) -> str:
    """The layout an evaluation reads: layout_dir, else the one the model was trained on."""
    if layout_dir:
        return layout_dir
    return load_model_config(model_dir)[1].layout_dir


def _link_tree(root: str, dst: str, skip, rel: str = "") -> None:
    """dst mirrors root with a symbolic link per entry, except the paths (relative to root) in
    `skip`; a folder holding a skipped path is mirrored entry by entry."""
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for name in os.listdir(os.path.join(root, rel)):
        entry = os.path.join(rel, name)
        if entry in skip:
            continue
        if any(s.startswith(entry + os.sep) for s in skip):
            _link_tree(root, dst, skip, entry)
        else:
            os.symlink(os.path.join(root, entry), os.path.join(dst, entry))


@contextlib.contextmanager
def spelled_layout(layout_dir: str, index_dir: Optional[str] = None,
                   speller: Optional[Speller] = None,
                   log=print) -> Iterator[Optional[str]]:
    """Yields the directory of the corrected view of `layout_dir` (removed on exit), or None
    when there is no speller (neither given nor in `index_dir`'s build)."""
    if speller is None and index_dir is not None:
        speller = index_speller(index_dir)
    if speller is None:
        yield None
        return
    spec = layout_lib.load_layout_spec(layout_dir)
    texts = layout_lib.load_queries(spec)
    corrected = speller.correct(texts)
    changed = sum(a != b for a, b in zip(texts, corrected))
    ids, splits = Tokenizer(spec.tokenizer_config).tokenize(corrected)
    stored_ids, _ = layout_lib.load_query_tokens(spec)
    view = tempfile.mkdtemp(prefix="dpsr-spelled-layout-")
    try:
        skip = {os.path.normpath(p) for p in (layout_lib.QUERY_TEXTS, layout_lib.QUERY_TOKEN_IDS,
                                              layout_lib.QUERY_TOKEN_SPLITS)}
        _link_tree(spec.layout_dir, view, skip)
        with open(os.path.join(view, layout_lib.QUERY_TEXTS), "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in corrected)
        np.save(os.path.join(view, layout_lib.QUERY_TOKEN_IDS), ids.astype(stored_ids.dtype))
        np.save(os.path.join(view, layout_lib.QUERY_TOKEN_SPLITS), splits.astype(np.int64))
        log(f"spelling: {changed} of {len(texts)} queries of {layout_dir} corrected by the "
            f"catalog speller ({len(speller)} words)")
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)
