"""The FAISS index of a model trained with --joint_pq, written from its learned quantizer.

No FAISS training: each shard is

    IndexPreTransform(LinearTransform(R), IndexIVFPQ(IndexFlatIP(coarse centroids), d, nlist,
                                                     m, 8 bits, inner product, by_residual))

with R, the coarse centroids and the PQ codebooks copied from the checkpoint
(dpsr_tf/model/joint_pq.py) and every item written into the list and with the codes the model
assigns (joint_pq.encode_np, the NumPy twin of the training layer). FAISS's own encoding of the
same residuals with the copied codebooks is computed beside it and must agree (a code may
differ only on a float32 tie, where both codewords are equally near).

The build directory is laid out as `dpsr index` writes it (dpsr_tf/indexing/index_layout.py: manifest,
shard_XXXXX/index.faiss + ids.txt, the blake2b sharding rule, item_embeddings.npy and the
lexical index beside them), so `dpsr export`, `dpsr evaluate --served` and the servable's
Dpsr>FaissSearch op read it unchanged.

    manifest = build_joint_pq_index(model_dir, "/data/index_pq", num_shards=1, nprobe=32)
"""
import json
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np
from absl import logging

from dpsr_tf.model import joint_pq
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.indexing import catalog_index, index_builder, index_layout
from dpsr_tf.indexing.lexical_manifest import LexicalConfig

# Codes whose codeword FAISS finds nearer than the model's, beyond a float tie, before the build
# is refused as inconsistent.
MAX_CODE_DISAGREEMENT = 1e-3
# Two codewords tie when their squared distances to a residual differ by less than this share of
# the distances' scale: FAISS encodes in float32 and the model in float64, so on near-equidistant
# codewords they may each pick the other, and in a small catalog one such code alone is over
# MAX_CODE_DISAGREEMENT.
TIE_TOLERANCE = 1e-5


def factory_name(nlist: int, m: int) -> str:
    """The manifest's factory field of a joint PQ index (descriptive: not an index_factory
    string, as the rotation is learned, not trained by FAISS)."""
    return f"JointPQ:LinearTransform,IVF{nlist},PQ{m}"


def make_faiss_index(quantizer: Dict[str, np.ndarray], nprobe: int):
    """An empty, trained IndexPreTransform(LinearTransform(R), IndexIVFPQ) of the quantizer.

    Args:
      quantizer: joint_pq.read_quantizer's dict (rotation [d, d], coarse_centroids [nlist, d],
        codebooks [m, 256, d / m]).
      nprobe: lists probed per search by default (clamped to nlist).
    """
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    rotation = np.ascontiguousarray(quantizer["rotation"], np.float32)
    centroids = np.ascontiguousarray(quantizer["coarse_centroids"], np.float32)
    codebooks = np.ascontiguousarray(quantizer["codebooks"], np.float32)
    nlist, d = centroids.shape
    m, ksub, dsub = codebooks.shape
    if ksub != joint_pq.KSUB or m * dsub != d or rotation.shape != (d, d):
        raise ValueError(f"inconsistent quantizer: rotation {rotation.shape}, centroids "
                         f"{centroids.shape}, codebooks {codebooks.shape}")
    coarse = faiss.IndexFlatIP(d)
    coarse.add(centroids)
    ivfpq = faiss.IndexIVFPQ(coarse, d, nlist, m, joint_pq.NBITS, faiss.METRIC_INNER_PRODUCT)
    ivfpq.own_fields = True
    coarse.this.disown()
    ivfpq.by_residual = True
    faiss.copy_array_to_vector(codebooks.ravel(), ivfpq.pq.centroids)
    ivfpq.is_trained = True
    ivfpq.precompute_table()  # a no-op for inner product; kept for the L2 case's invariants
    ivfpq.nprobe = max(1, min(int(nprobe), nlist))
    transform = faiss.LinearTransform(d, d, False)
    faiss.copy_array_to_vector(rotation.ravel(), transform.A)  # y = A x, A row-major
    transform.is_trained = True
    index = faiss.IndexPreTransform(transform, ivfpq)
    index.own_fields = True
    transform.this.disown()
    ivfpq.this.disown()
    return index


def fill_index(index, rotated: np.ndarray, lists: np.ndarray, codes: np.ndarray) -> float:
    """Writes items into an empty make_faiss_index index with the model's lists and codes.

    Args:
      index: from make_faiss_index.
      rotated: [n, d] float32 R g of the items (FAISS's encoding is checked on them).
      lists: [n] int64; codes: [n, m] uint8; item i gets label i.

    Returns:
      The fraction of codes for which FAISS's own encoding of the residuals finds a codeword
      nearer than the model's by more than a float tie (TIE_TOLERANCE); 0 when the index holds
      the model's quantizer.
    """
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    n = len(lists)
    if n:
        centroids = faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(),
                                       ivf.nlist * ivf.d).reshape(ivf.nlist, ivf.d)
        residual = np.ascontiguousarray(rotated - centroids[lists], np.float32)
        faiss_codes = ivf.pq.compute_codes(residual)
        disagree = _beyond_tie_fraction(ivf.pq, residual, codes, faiss_codes)
    else:
        disagree = 0.0
    codes = np.ascontiguousarray(codes, np.uint8)
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(ivf.nlist + 1))
    for list_no in range(ivf.nlist):
        rows = order[bounds[list_no]:bounds[list_no + 1]]
        if len(rows):
            ids = np.ascontiguousarray(rows, np.int64)
            block = np.ascontiguousarray(codes[rows])
            ivf.invlists.add_entries(list_no, len(rows), faiss.swig_ptr(ids),
                                     faiss.swig_ptr(block))
    ivf.ntotal = n
    index.ntotal = n
    return disagree


def _beyond_tie_fraction(pq, residual: np.ndarray, codes: np.ndarray,
                         faiss_codes: np.ndarray) -> float:
    """The share of codes where the index's codebook holds a codeword nearer to the residual
    than the model's code, measured in float64 against the codebook FAISS itself stores."""
    rows, subs = np.nonzero(faiss_codes != codes)
    if not len(rows):
        return 0.0
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    m, dsub = pq.M, pq.dsub
    books = faiss.vector_to_array(pq.centroids).reshape(m, pq.ksub, dsub).astype(np.float64)
    x = np.asarray(residual, np.float64).reshape(len(residual), m, dsub)[rows, subs]
    mine = books[subs, codes[rows, subs]]
    theirs = books[subs, faiss_codes[rows, subs]]
    d_mine = ((x - mine) ** 2).sum(1)
    d_theirs = ((x - theirs) ** 2).sum(1)
    scale = (x ** 2).sum(1) + (mine ** 2).sum(1) + (theirs ** 2).sum(1)
    beyond = d_mine - d_theirs > TIE_TOLERANCE * scale
    return float(beyond.sum()) / codes.size


def build_from_embeddings(embeddings: np.ndarray, item_ids, quantizer: Dict[str, np.ndarray],
                          output_dir: str, *, num_shards: int = 1, nprobe: int = 64,
                          overwrite: bool = False,
                          started: Optional[float] = None) -> index_layout.IndexManifest:
    """The build directory of a learned quantizer over given item embeddings.

    Args:
      embeddings: [N, d] float32 item tower output (unquantized).
      item_ids: [N] item ids; row i = item_ids[i].
      quantizer: joint_pq.read_quantizer's dict.
      output_dir: build directory (dpsr_tf/indexing/index_layout.py).
      num_shards: S, the blake2b sharding rule of index_layout.
      nprobe: default nprobe stored in each shard.

    Raises:
      ValueError: bad inputs, or FAISS encodes more than MAX_CODE_DISAGREEMENT of the codes
        differently from the model.
      FileExistsError: output_dir holds a build and overwrite is False.
    """
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    start = started or time.monotonic()
    # pylint: disable-next=protected-access
    embeddings, ids = index_builder._check_inputs(embeddings, item_ids)
    n, d = embeddings.shape
    if quantizer["rotation"].shape != (d, d):
        raise ValueError(f"the quantizer rotates {quantizer['rotation'].shape[0]}-dimensional "
                         f"vectors, the embeddings have {d} dimensions: another model's?")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    index_builder._prepare_dir(output_dir, overwrite)  # pylint: disable=protected-access
    lists, codes = joint_pq.encode_np(embeddings, quantizer["rotation"],
                                      quantizer["coarse_centroids"], quantizer["codebooks"])
    rotated = (np.asarray(embeddings, np.float64) @ quantizer["rotation"].T).astype(np.float32)
    template = faiss.serialize_index(make_faiss_index(quantizer, nprobe))
    assignment = index_layout.shard_assignments(ids, num_shards)
    shards, disagreements = [], []
    for shard in range(num_shards):
        rows = np.arange(n) if num_shards == 1 else np.flatnonzero(assignment == shard)
        index = faiss.deserialize_index(template)
        disagreements.append(fill_index(index, rotated[rows], lists[rows], codes[rows]))
        shards.append(index_builder.write_shard(output_dir, shard, index,
                                                [ids[i] for i in rows]))
        logging.info("joint PQ shard %d/%d: %d items written with the model's codes", shard + 1,
                     num_shards, len(rows))
    worst = max(disagreements) if disagreements else 0.0
    if worst > MAX_CODE_DISAGREEMENT:
        raise ValueError(f"FAISS encodes {worst:.4%} of the PQ codes differently from the model "
                         f"(allowed {MAX_CODE_DISAGREEMENT:.2%}): the exported quantizer does not "
                         "match the trained one; file a bug with the checkpoint")
    nlist = quantizer["coarse_centroids"].shape[0]
    m = quantizer["codebooks"].shape[0]
    manifest = index_layout.IndexManifest(
        factory=factory_name(nlist, m), metric="inner_product", dimension=int(d),
        num_items=int(n), num_shards=num_shards, sharding_rule=index_layout.SHARDING_RULE,
        shards=tuple(shards), normalized=False, nprobe=max(1, min(int(nprobe), nlist)),
        ef_search=0, train_size=0, seed=0, build_seconds=round(time.monotonic() - start, 3),
        peak_rss_bytes=index_builder._peak_rss_bytes(),  # pylint: disable=protected-access
        faiss_version=faiss.__version__,
        description="IndexPreTransform(IndexIVFPQ)")
    index_layout.write_manifest(output_dir, manifest)
    logging.info("joint PQ index %s: %d items, %d shard(s), %s, nprobe %d, FAISS/model code "
                 "disagreement %.5f", output_dir, n, num_shards, manifest.factory,
                 manifest.nprobe, worst)
    return manifest


def build_joint_pq_index(model_dir: str, output_dir: str, *, layout_dir: Optional[str] = None,
                         checkpoint: Optional[str] = None, num_shards: int = 1,
                         nprobe: int = 64, batch_size: int = 4096, overwrite: bool = False,
                         lexical: Optional[LexicalConfig] = LexicalConfig()
                         ) -> index_layout.IndexManifest:
    """`dpsr index --from_model_pq`: the catalog's item embeddings through the model's learned
    quantizer, written as an index build directory (+ the lexical index unless None).

    Raises:
      ValueError: the model was not trained with --joint_pq (or a build error above).
    """
    start = time.monotonic()
    cfg, spec = model_dir_lib.load_model_config(model_dir)
    if not cfg.joint_pq:
        raise ValueError(f"{model_dir} was not trained with --joint_pq (dpsr_config.json "
                         "model.joint_pq is false): build its index with `dpsr index "
                         "--index_factory=...` instead")
    ckpt = model_dir_lib.latest_checkpoint(model_dir, checkpoint)
    quantizer = joint_pq.read_quantizer(ckpt)
    embeddings, ids = catalog_index.embed_catalog(model_dir, layout_dir=layout_dir,
                                                  checkpoint=ckpt, batch_size=batch_size)
    manifest = build_from_embeddings(embeddings, ids, quantizer, output_dir,
                                     num_shards=num_shards, nprobe=nprobe, overwrite=overwrite,
                                     started=start)
    np.save(os.path.join(output_dir, catalog_index.EMBEDDINGS_FILE), embeddings)
    index_layout.write_id_map(os.path.join(output_dir, catalog_index.EMBEDDING_IDS_FILE), ids)
    if lexical is not None:
        manifest = catalog_index.add_lexical_index(output_dir, layout_dir or spec.layout_dir,
                                                   lexical)
    return manifest


def quantizer_of_index(index) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Reads (quantizer, lists [n], codes [n, m] uint8 by label) back from a FAISS index that
    make_faiss_index + fill_index wrote (for tests and checks)."""
    faiss = index_builder._require_faiss()  # pylint: disable=protected-access
    pre = faiss.downcast_index(index)
    transform = faiss.downcast_VectorTransform(pre.chain.at(0))
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    d, nlist = ivf.d, ivf.nlist
    rotation = faiss.vector_to_array(transform.A).reshape(d, d)
    centroids = faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(),
                                   nlist * d).reshape(nlist, d).copy()
    m = ivf.pq.M
    codebooks = faiss.vector_to_array(ivf.pq.centroids).reshape(m, joint_pq.KSUB, d // m)
    lists = np.full(ivf.ntotal, -1, np.int64)
    codes = np.zeros([ivf.ntotal, m], np.uint8)
    invlists = ivf.invlists
    for list_no in range(nlist):
        size = invlists.list_size(list_no)
        if not size:
            continue
        labels = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy()
        block = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size)
        lists[labels] = list_no
        codes[labels] = np.asarray(block).reshape(size, m)
    return ({"rotation": rotation, "coarse_centroids": centroids, "codebooks": codebooks},
            lists, codes)


SOURCE_FILE = "joint_pq_source.json"


def index_for_export(model_dir: str, *, checkpoint: Optional[str] = None,
                     layout_dir: Optional[str] = None, nprobe: int = 64,
                     lexical: Optional[LexicalConfig] = LexicalConfig()) -> str:
    """`dpsr export` of a --joint_pq model without --index_dir: the learned index of the
    checkpoint, built into <model_dir>/joint_pq_index-<step> (reused when it was built from
    the same checkpoint). Returns the build directory.

    Raises:
      ValueError: the model was not trained with --joint_pq (it needs `dpsr index`).
    """
    cfg, _ = model_dir_lib.load_model_config(model_dir)
    if not cfg.joint_pq:
        raise ValueError(f"--index_dir is required: {model_dir} was not trained with --joint_pq, "
                         f"so its index comes from `dpsr index --model_dir={model_dir} "
                         "--output_dir=I`")
    ckpt = model_dir_lib.latest_checkpoint(model_dir, checkpoint)
    out = os.path.join(model_dir, "joint_pq_index-" + os.path.basename(ckpt).split("-")[-1])
    source = os.path.join(out, SOURCE_FILE)
    if os.path.exists(os.path.join(out, index_layout.MANIFEST_NAME)) and os.path.exists(source):
        with open(source, encoding="utf-8") as f:
            if json.load(f).get("checkpoint") == os.path.abspath(ckpt):
                logging.info("joint PQ index of %s already built in %s", ckpt, out)
                return out
    build_joint_pq_index(model_dir, out, layout_dir=layout_dir, checkpoint=ckpt,
                         nprobe=nprobe, overwrite=True, lexical=lexical)
    with open(source, "w", encoding="utf-8") as f:
        json.dump({"checkpoint": os.path.abspath(ckpt)}, f)
    return out
