"""The served ranking (dpsr_tf/evaluation/served.py) against numpy brute force max over heads,
on tiny seeded catalogs indexed by the real index builder (Flat, IVF; 1 and 2 shards)."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import served
from dpsr_tf.model.scoring import soft_dot_product_np
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig, build_index
from tests.support import waiting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_ITEMS, DIM, HEADS, NUM_REQUESTS = 300, 16, 3, 40
NLIST = 16
ITEM_IDS = [f"item{r}" for r in range(NUM_ITEMS)]


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalog():
    """Clustered unit item vectors; each request's heads lie near 2 items (its relevant ones)."""
    import faiss  # pylint: disable=import-outside-toplevel
    faiss.omp_set_num_threads(1)  # 2 shared cores: OpenMP barriers of concurrent runs crawl
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, DIM))
    items = _unit(centres[rng.integers(0, 12, NUM_ITEMS)] + 0.4 * rng.standard_normal(
        (NUM_ITEMS, DIM)))
    relevant = np.stack([rng.choice(NUM_ITEMS, 2, replace=False) for _ in range(NUM_REQUESTS)])
    anchors = relevant[:, [0, 1, 0]]                                     # [Q, m]
    heads = _unit(items[anchors] + 0.5 * rng.standard_normal((NUM_REQUESTS, HEADS, DIM)))
    relevant.sort(axis=1)
    eval_set = eval_set_lib.EvalSet(
        queries=[f"q{i}" for i in range(NUM_REQUESTS)],
        query_rows=np.arange(NUM_REQUESTS, dtype=np.int64),
        user_rows=np.full(NUM_REQUESTS, -1, np.int64),
        history_ends=np.zeros(NUM_REQUESTS, np.int64),
        relevant_splits=np.arange(0, 2 * NUM_REQUESTS + 1, 2, dtype=np.int64),
        relevant_rows=relevant.reshape(-1).astype(np.int64),
        relevant_gains=np.ones(2 * NUM_REQUESTS, np.float32), min_gain=0.0)
    return types.SimpleNamespace(items=items, heads=heads, eval_set=eval_set)


@pytest.fixture(scope="module")
def build(catalog, tmp_path_factory):
    """build(factory, num_shards, nprobe) -> index directory written by build_index (cached)."""
    cache = {}

    def make(factory, num_shards=1, nprobe=1):
        key = (factory, num_shards, nprobe)
        if key not in cache:
            out = str(tmp_path_factory.mktemp("index"))
            build_index(catalog.items, ITEM_IDS, out,
                        IndexBuildConfig(factory=factory, num_shards=num_shards, nprobe=nprobe,
                                         num_threads=1))
            cache[key] = out
        return cache[key]

    return make


def brute_force_max(heads, items, k):
    """(scores [Q, k], rows [Q, k]): exact max over heads, float64 numpy, ties by lower row."""
    scores = np.einsum("qmd,nd->qnm", heads.astype(np.float64), items.astype(np.float64)).max(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def open_index(directory, nprobe=None, dimension=DIM, item_ids=ITEM_IDS):
    return served.open_served_index(directory, item_ids, dimension, nprobe)


@pytest.mark.parametrize("factory,nprobe", [("Flat", None), (f"IVF{NLIST},Flat", NLIST)])
@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("k", [1, 20, 100])
def test_exhaustive_search_equals_brute_force_max_over_heads(catalog, build, factory, nprobe,
                                                             num_shards, k):
    index = open_index(build(factory, num_shards), nprobe)
    assert index.manifest.num_shards == num_shards
    got_scores, got_rows = served.search_served(index, catalog.heads, k, batch_size=16)
    want_scores, want_rows = brute_force_max(catalog.heads, catalog.items, k)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("items,weight", [(3, 0.25), (10, 1.0)])
def test_dense_feedback_search_equals_brute_force_of_the_moved_heads(catalog, build, items,
                                                                     weight):
    """search_with_feedback: a first exact search of `items`, each head moved by hand (a share
    of its norm toward the unit mean of those items), then the exact top k of the moved heads."""
    from dpsr_tf.search.dense_feedback import FeedbackConfig  # pylint: disable=import-outside-toplevel
    cfg = FeedbackConfig(items=items, weight=weight)
    index = open_index(build("Flat", 1))
    got_scores, got_rows = served.search_with_feedback(index, catalog.heads, catalog.items, 50,
                                                       cfg, batch_size=16)
    _, first = brute_force_max(catalog.heads, catalog.items, items)
    mean = catalog.items[first].astype(np.float64).mean(axis=1)              # [Q, d]
    unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    heads = catalog.heads.astype(np.float64)
    moved = heads + weight * np.linalg.norm(heads, axis=2, keepdims=True) * unit[:, None, :]
    want_scores, want_rows = brute_force_max(moved, catalog.items, 50)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-4)
    # The move changes the lists (else this test could not fail), and no feedback is the plain
    # search.
    assert (got_rows != brute_force_max(catalog.heads, catalog.items, 50)[1]).any()
    plain = served.search_with_feedback(index, catalog.heads, catalog.items, 50,
                                        FeedbackConfig(), batch_size=16)
    np.testing.assert_array_equal(plain[1], served.search_served(index, catalog.heads, 50)[1])


@pytest.mark.parametrize("factory,nprobe", [("Flat", None), (f"IVF{NLIST},Flat", 2),
                                            (f"IVF{NLIST},PQ4", 4)])
def test_two_shards_merge_to_the_unsharded_answer(catalog, build, factory, nprobe):
    one = served.search_served(open_index(build(factory, 1), nprobe), catalog.heads, 50)
    two = served.search_served(open_index(build(factory, 2), nprobe), catalog.heads, 50)
    if factory == "Flat":
        np.testing.assert_array_equal(two[1], one[1])
        np.testing.assert_allclose(two[0], one[0], atol=1e-6)
    else:
        # Approximate: each shard keeps its own k, so 2 shards see at least the 1-shard
        # candidates (same quantizer, same probed lists); the merged top 50 is never worse.
        assert (two[0][:, :50] >= one[0][:, :50] - 1e-5).all()


def test_shards_hold_disjoint_items_covering_the_catalog(build):
    index = open_index(build("Flat", 2))
    rows = np.concatenate(index.rows)
    assert [len(r) for r in index.rows] == [s.num_items for s in index.manifest.shards]
    assert sorted(rows.tolist()) == list(range(NUM_ITEMS))


def _metrics(catalog, index, beta=0.5, heads=None):
    heads = catalog.heads if heads is None else heads
    scorer = types.SimpleNamespace(request_emb=heads, item_emb=catalog.items, beta=beta)
    cfg = evaluate_lib.EvalConfig(recall_ks=(10, 100))
    ranked = evaluate_lib.metrics_lib.retrieve(
        lambda idx: soft_dot_product_np(heads[idx], catalog.items, beta), NUM_REQUESTS, 100)
    soft = evaluate_lib.metrics_lib.retrieval_metrics(
        ranked, catalog.eval_set.relevant_splits, catalog.eval_set.relevant_rows,
        catalog.eval_set.relevant_gains, recall_ks=cfg.recall_ks)
    return soft, served.served_metrics(scorer, catalog.eval_set, index, cfg, soft,
                                       log=lambda _: None)


def _recall(ranked, eval_set, k):
    rel = eval_set.relevant_rows.reshape(-1, 2)
    return float(np.mean([len(set(r[:k]) & set(t)) / 2 for r, t in zip(ranked.tolist(), rel)]))


def test_metrics_at_full_nprobe_lose_nothing_to_the_index(catalog, build):
    soft, got = _metrics(catalog, open_index(build(f"IVF{NLIST},Flat"), nprobe=NLIST))
    _, exact = brute_force_max(catalog.heads, catalog.items, 100)
    for k in (10, 100):
        assert got[f"max_recall@{k}"] == pytest.approx(_recall(exact, catalog.eval_set, k))
        assert got[f"served_recall@{k}"] == got[f"max_recall@{k}"]
        assert got[f"served_overlap@{k}"] == 1.0
        assert got[f"recall_lost_to_index@{k}"] == 0.0
        assert got[f"recall_lost_to_max@{k}"] == pytest.approx(
            soft[f"recall@{k}"] - got[f"max_recall@{k}"])
    assert got["served_nprobe"] == NLIST and got["max_equals_soft_dot"] is False
    assert got["served_ndcg@10"] == got["max_ndcg@10"]


def test_low_nprobe_loses_recall_to_the_index(catalog, build):
    # The index's stored nprobe (1 of 16 lists) is used when none is given.
    index = open_index(build(f"IVF{NLIST},Flat", nprobe=1))
    assert index.nprobe == 1
    _, got = _metrics(catalog, index)
    _, served_rows = served.search_served(index, catalog.heads, 100)
    for k in (10, 100):
        assert got[f"served_recall@{k}"] == pytest.approx(
            _recall(served_rows, catalog.eval_set, k))
        assert got[f"recall_lost_to_index@{k}"] == pytest.approx(
            got[f"max_recall@{k}"] - got[f"served_recall@{k}"])
        assert got[f"recall_lost_to_index@{k}"] >= 0
        assert got[f"served_overlap@{k}"] < 0.9
    assert got["recall_lost_to_index@100"] > 0


@pytest.mark.parametrize("beta,num_heads", [(0.0, HEADS), (0.5, 1)])
def test_soft_dot_equals_max_with_beta_zero_or_one_head(catalog, build, beta, num_heads):
    _, got = _metrics(catalog, open_index(build("Flat")), beta=beta,
                      heads=catalog.heads[:, :num_heads])
    assert got["max_equals_soft_dot"] is True
    assert got["recall_lost_to_max@10"] == 0.0 and got["recall_lost_to_max@100"] == 0.0
    assert "(= soft dot: beta=0 or one head)" in served.summarize_served(got, (10, 100))


def test_summary_names_every_ranking_and_the_loss(catalog, build):
    _, got = _metrics(catalog, open_index(build(f"IVF{NLIST},Flat", nprobe=1)))
    text = served.summarize_served(got, (10, 100))
    assert f"served (IVF{NLIST},Flat, 1 shard(s), nprobe=1): recall@10=" in text
    assert f"to_index@100={got['recall_lost_to_index@100']:+.4f}" in text
    assert "max over heads, exact: recall@10=" in text


def test_nprobe_override_and_clamp(build):
    directory = build(f"IVF{NLIST},Flat", nprobe=1)
    assert open_index(directory, nprobe=4).nprobe == 4
    assert open_index(directory, nprobe=10 * NLIST).nprobe == NLIST


@pytest.mark.parametrize("case,error,match", [
    ("dimension", ValueError, r"holds 16-dimensional vectors but the model's embeddings have 8"),
    ("num_items", ValueError, r"holds 300 items but the layout has 299"),
    ("ids", ValueError, r"item id 'item0' is not in the layout"),
    ("nprobe_flat", ValueError, r"nprobe=4 given but index .* \(Flat\) is not an IVF index"),
    ("nprobe_zero", ValueError, r"nprobe must be >= 1.*got 0"),
    ("missing", FileNotFoundError, r"index directory .*nowhere does not exist"),
    ("no_manifest", FileNotFoundError, r"manifest.json not found"),
])
def test_wrong_index_is_a_clear_error(build, tmp_path, case, error, match):
    directory = build("Flat")
    kwargs = {}
    if case == "dimension":
        kwargs["dimension"] = 8
    elif case == "num_items":
        kwargs["item_ids"] = ITEM_IDS[:-1]
    elif case == "ids":
        kwargs["item_ids"] = [f"other{r}" for r in range(NUM_ITEMS)]
    elif case == "nprobe_flat":
        kwargs["nprobe"] = 4
    elif case == "nprobe_zero":
        directory, kwargs["nprobe"] = build(f"IVF{NLIST},Flat"), 0
    elif case == "missing":
        directory = str(tmp_path / "nowhere")
    elif case == "no_manifest":
        directory = str(tmp_path)
    with pytest.raises(error, match=match) as info:
        open_index(directory, **kwargs)
    if case not in ("nprobe_flat", "nprobe_zero"):
        assert directory in str(info.value) and "dpsr index --model_dir=" in str(info.value)


def test_index_from_another_checkpoint_is_a_clear_error(catalog, tmp_path):
    directory = str(tmp_path)
    shuffled = np.random.default_rng(1).permutation(NUM_ITEMS)
    np.save(os.path.join(directory, catalog_index.EMBEDDINGS_FILE), catalog.items[shuffled])
    with open(os.path.join(directory, catalog_index.EMBEDDING_IDS_FILE), "w") as f:
        f.writelines(f"{ITEM_IDS[r]}\n" for r in shuffled)
    # The same vectors in another order are the same embeddings.
    assert served.check_index_embeddings(directory, catalog.items, ITEM_IDS) == 0.0
    with pytest.raises(ValueError, match=r"built from other item embeddings .*--checkpoint"):
        served.check_index_embeddings(directory, catalog.items + 0.01, ITEM_IDS)
    assert served.check_index_embeddings(str(tmp_path / "none"), catalog.items, ITEM_IDS) is None


def test_merge_shards_pads_and_sorts():
    # Hand-worked: shard 0 has rows 3 (0.9), 5 (0.2); shard 1 has row 7 (0.5) and padding.
    scores = [np.array([[0.9, 0.2]], np.float32), np.array([[0.5, 0.0]], np.float32)]
    rows = [np.array([[3, 5]]), np.array([[7, -1]])]
    s, r = served.merge_shards_np(scores, rows, 5)
    assert r.tolist() == [[3, 7, 5, -1, -1]]
    np.testing.assert_allclose(s, [[0.9, 0.5, 0.2, -np.inf, -np.inf]])


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "evaluate", *args], env=env,
                          capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)


def test_cli_served_flags_are_checked():
    for flag in ("--served", "--hybrid"):
        proc = _cli("--model_dir=/m", flag)
        assert proc.returncode != 0
        assert "--served and --hybrid need --model_dir and --index_dir" in proc.stderr
    proc = _cli("--model_dir=/m", "--index_dir=/i")
    assert proc.returncode != 0 and "only with --served or --hybrid" in proc.stderr
    proc = _cli("--model_dir=/m", "--index_dir=/i", "--hybrid", "--fusion=rrf", "--rrf_k=0")
    assert proc.returncode != 0 and "rrf_k must be > 0" in proc.stderr
    proc = _cli("--model_dir=/m", "--index_dir=/i", "--served", "--dense_feedback")
    assert proc.returncode != 0 and "--dense_feedback is read only with --hybrid" in proc.stderr
    proc = _cli("--model_dir=/m", "--index_dir=/i", "--hybrid", "--dense_feedback",
                "--dense_feedback_items=0")
    assert proc.returncode != 0 and "--dense_feedback_items must be in [1, 100]" in proc.stderr
    proc = _cli("--model_dir=/m", "--index_dir=/i", "--hybrid", "--dense_feedback",
                "--dense_feedback_weight=nan")
    assert proc.returncode != 0 and "--dense_feedback_weight must be in (0, 10]" in proc.stderr
