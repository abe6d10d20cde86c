"""The fusion of `dpsr crossval --hybrid` (evaluation/crossval_hybrid.py), checked against
independent references: fold F's fusion is the one fusion_choice.choose_fusion picks on fold F's
validation lists (never on its held-out requests); cross_fit (bench/dense_feedback_quality.py)
chooses on the other folds' lists; the hybrid's per-request metrics equal a reciprocal rank
fusion and recall / nDCG written out here in NumPy."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.evaluation import crossval_hybrid as hybrid_lib
from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.indexing.lexical_manifest import LexicalConfig
from dpsr_tf.search.fusion import FusionConfig
from tests.support import waiting
from tests.support.fusion_reference import metrics_by_hand, rrf_by_hand

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EvalSet = collections.namedtuple("EvalSet", "relevant_splits relevant_rows relevant_gains")
NUM_ITEMS = 120
K = 30
RECALL_KS = (10, 30)
OBJECTIVE = ("recall@10", "recall@30", "ndcg@10")


def _list(rng, relevant, quality):
    """[K] rows best first: each relevant item near the top with probability `quality`."""
    hits = [r for r in relevant if rng.rand() < quality]
    rest = [r for r in rng.permutation(NUM_ITEMS).tolist() if r not in hits]
    return (hits + rest)[:K]


def _fold(rng, num_requests, dense_quality, lexical_quality):
    relevant = [rng.choice(NUM_ITEMS, size=rng.randint(1, 4), replace=False).tolist()
                for _ in range(num_requests)]
    gains = [rng.choice([1.0, 2.0], size=len(r)).tolist() for r in relevant]
    scores = np.tile(np.linspace(9.0, 1.0, K, dtype=np.float32), (num_requests, 1))
    lists = hybrid_lib.FoldLists(
        dense_scores=scores, dense_rows=np.array([_list(rng, r, dense_quality)
                                                  for r in relevant], np.int64),
        lexical_scores=scores * 3, lexical_rows=np.array([_list(rng, r, lexical_quality)
                                                          for r in relevant], np.int64),
        relevant_splits=np.cumsum([0] + [len(r) for r in relevant]).astype(np.int64),
        relevant_rows=np.array([x for r in relevant for x in r], np.int64),
        relevant_gains=np.array([g for gs in gains for g in gs], np.float32), k=K)
    return lists, relevant, gains


def _pooled_eval_set(folds):
    relevant = [r for _, rel, _ in folds for r in rel]
    gains = [g for _, _, gs in folds for g in gs]
    return EvalSet(np.cumsum([0] + [len(r) for r in relevant]).astype(np.int64),
                   np.array([x for r in relevant for x in r], np.int64),
                   np.array([x for g in gains for x in g], np.float32))


def test_rrf_by_hand_on_a_worked_example():
    # dense [7, 3, 9], lexical [3, 5]; rrf_k 5, weights 1 and 0.5:
    #   7: 1/6; 3: 1/7 + 0.5/6 = 19/84; 9: 1/8; 5: 0.5/7 = 1/14  ->  3, 7, 9, 5
    fused = rrf_by_hand(np.array([[3.0, 2.0, 1.0]]), np.array([[7, 3, 9]]),
                        np.array([[2.0, 1.0]]), np.array([[3, 5]]), 4, 5.0, 1.0, 0.5)
    assert fused.tolist() == [[3, 7, 9, 5]]
    lists = hybrid_lib.FoldLists(np.array([[3.0, 2.0, 1.0]], np.float32),
                                 np.array([[7, 3, 9]]), np.array([[2.0, 1.0]], np.float32),
                                 np.array([[3, 5]]), np.array([0, 2]), np.array([5, 9]),
                                 np.array([1.0, 1.0], np.float32), k=4)
    # relevant {5, 9}: fused ranks 4 and 3 -> recall@2 0, recall@4 1; ndcg@10 =
    # (1/log2(4) + 1/log2(5)) / (1 + 1/log2(3))
    got = hybrid_lib.candidate_metrics(lists, [FusionConfig()], (2, 4))[0]
    assert got["recall@2"].tolist() == [0.0] and got["recall@4"].tolist() == [1.0]
    want = (1 / np.log2(4) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert got["ndcg@10"][0] == pytest.approx(want)


@pytest.mark.parametrize("candidate", [FusionConfig(), FusionConfig(rrf_k=60.0,
                                                                    lexical_weight=1.0),
                                       FusionConfig(rrf_k=20.0, lexical_weight=0.25)])
@pytest.mark.parametrize("tied", [False, True])
def test_fused_per_request_metrics_equal_numpy_rrf(candidate, tied):
    lists, relevant, gains = _fold(np.random.RandomState(3), 40, 0.6, 0.6)
    if tied:    # runs of equal lexical scores share a rank
        lists.lexical_scores = np.round(lists.lexical_scores / 4.0) * 4.0
    got = hybrid_lib.candidate_metrics(lists, [candidate], RECALL_KS)[0]
    fused = rrf_by_hand(lists.dense_scores, lists.dense_rows, lists.lexical_scores,
                        lists.lexical_rows, K, candidate.rrf_k, candidate.dense_weight,
                        candidate.lexical_weight)
    want = metrics_by_hand(fused, relevant, gains, RECALL_KS)
    for metric in OBJECTIVE:
        np.testing.assert_allclose(got[metric], want[metric], rtol=1e-12, atol=1e-12)


def test_cross_fitted_choice_never_looks_at_the_held_out_fold():
    rng = np.random.RandomState(11)
    # Fold 0: lexical good, dense poor. Folds 1 and 2: dense good, lexical poor.
    folds = [_fold(rng, 50, 0.1, 0.95), _fold(rng, 50, 0.95, 0.1), _fold(rng, 50, 0.95, 0.1)]
    candidates = fusion_choice.CANDIDATES
    per_fold = [hybrid_lib.candidate_metrics(lists, candidates, RECALL_KS)
                for lists, _, _ in folds]
    crossed = hybrid_lib.cross_fit(per_fold, OBJECTIVE)

    for fold in range(3):
        others = [folds[f] for f in range(3) if f != fold]
        pooled = [np.concatenate([getattr(o[0], name) for o in others])
                  for name in ("dense_scores", "dense_rows", "lexical_scores", "lexical_rows")]
        # The reference: the export-time chooser on the other folds' lists only.
        want = fusion_choice.choose_fusion(pooled[0], pooled[1],
                                           lambda cfg, p=pooled: (p[2], p[3]),
                                           _pooled_eval_set(others), K, candidates, OBJECTIVE)
        chosen, scores = crossed[fold]
        assert candidates[chosen] == want.config
        np.testing.assert_allclose(scores, [c["score"] for c in want.candidates], rtol=1e-12)

    # On its own requests fold 0 would pick a lexical-led fusion; cross-fitted it gets the
    # dense-led one the other folds prefer.
    own, _ = hybrid_lib.choose(per_fold[0], OBJECTIVE)
    chosen0 = candidates[crossed[0][0]]
    assert candidates[own].lexical_weight > candidates[own].dense_weight / 2
    assert chosen0 != candidates[own]
    assert chosen0.lexical_weight < chosen0.dense_weight

    # Fold 0's own values do not move fold 0's choice (only the others' choices).
    scrambled = [per_fold[0][::-1]] + per_fold[1:]
    assert hybrid_lib.cross_fit(scrambled, OBJECTIVE)[0] == crossed[0]


def _write_fold(fold_dir, held_out, validation):
    os.makedirs(fold_dir, exist_ok=True)
    held_out.save(os.path.join(fold_dir, hybrid_lib.LISTS_FILE))
    if validation is not None:
        validation.save(os.path.join(fold_dir, hybrid_lib.VALIDATION_LISTS_FILE))


def _rejudged(lists, rng):
    """The same lists with other relevant items (new judgments, same rankings)."""
    relevant = [rng.choice(NUM_ITEMS, size=2, replace=False).tolist() for _ in range(len(lists))]
    return hybrid_lib.FoldLists(
        lists.dense_scores, lists.dense_rows, lists.lexical_scores, lists.lexical_rows,
        np.arange(0, 2 * len(lists) + 1, 2, dtype=np.int64),
        np.array([x for r in relevant for x in r], np.int64),
        np.ones(2 * len(lists), np.float32), k=lists.k)


def _chosen(fold_dirs):
    for fold_dir in fold_dirs:   # the candidate caches are keyed by candidates, not by lists
        for name in (hybrid_lib.CANDIDATES_FILE, hybrid_lib.VALIDATION_CANDIDATES_FILE):
            if os.path.exists(os.path.join(fold_dir, name)):
                os.remove(os.path.join(fold_dir, name))
    return [FusionConfig.from_json(r["fusion"]) for r in
            hybrid_lib.summarize(fold_dirs, RECALL_KS, objective=OBJECTIVE, log=lambda _: None)]


def test_each_fold_chooses_on_its_validation_lists_only(tmp_path):
    rng = np.random.RandomState(17)
    # Every fold's held-out requests: dense good, lexical poor. Fold 0's validation requests:
    # lexical good, dense poor; fold 1's: dense good.
    held_out = [_fold(rng, 50, 0.95, 0.1)[0] for _ in range(3)]
    validation = [_fold(rng, 40, 0.1, 0.95)[0], _fold(rng, 40, 0.95, 0.1)[0], None]
    dirs = [str(tmp_path / f"fold_{f}") for f in range(3)]
    for d, h, v in zip(dirs, held_out, validation):
        _write_fold(d, h, v)
    candidates = fusion_choice.CANDIDATES
    chosen = _chosen(dirs)
    # The reference: the export-time chooser on fold 0's validation lists alone.
    v = validation[0]
    want = fusion_choice.choose_fusion(v.dense_scores, v.dense_rows,
                                       lambda cfg: (v.lexical_scores, v.lexical_rows),
                                       EvalSet(v.relevant_splits, v.relevant_rows,
                                               v.relevant_gains), K, candidates, OBJECTIVE)
    assert chosen[0] == want.config
    assert chosen[0].lexical_weight > chosen[0].dense_weight / 2     # lexical-led
    assert chosen[1].lexical_weight < chosen[1].dense_weight         # dense-led

    # New judgments of every fold's held-out requests cannot move fold 0's or fold 1's choice.
    for d, h in zip(dirs, held_out):
        _rejudged(h, rng).save(os.path.join(d, hybrid_lib.LISTS_FILE))
    assert _chosen(dirs)[:2] == chosen[:2]
    # New judgments of fold 0's validation requests (the dense list's hits relevant) do.
    v0 = validation[0]
    dense_judged = hybrid_lib.FoldLists(
        v0.dense_scores, v0.dense_rows, v0.lexical_scores, v0.lexical_rows,
        np.arange(0, 2 * len(v0) + 1, 2, dtype=np.int64),
        v0.dense_rows[:, :2].reshape(-1).astype(np.int64), np.ones(2 * len(v0), np.float32),
        k=v0.k)
    dense_judged.save(os.path.join(dirs[0], hybrid_lib.VALIDATION_LISTS_FILE))
    moved = _chosen(dirs)
    assert moved[0] != chosen[0] and moved[0].lexical_weight < moved[0].dense_weight
    assert moved[1] == chosen[1]


def test_a_fold_without_validation_lists_chooses_on_its_own_and_says_so(tmp_path):
    rng = np.random.RandomState(19)
    held_out = _fold(rng, 30, 0.1, 0.95)[0]
    _write_fold(str(tmp_path / "fold_0"), held_out, None)
    lines = []
    result = hybrid_lib.summarize([str(tmp_path / "fold_0")], RECALL_KS, objective=OBJECTIVE,
                                  log=lines.append)[0]
    assert result["chosen_on"].startswith("eval") and "optimistic" in result["chosen_on"]
    assert result["fusion"] == result["self_chosen"]["fusion"]
    assert any("warning: fold 0 has no 'validation' split" in line for line in lines)


def test_spelling_is_on_only_where_the_best_spelled_candidate_scores_higher():
    # export's --spelling=auto rule on kept lists: compare each setting's best candidate.
    rng = np.random.RandomState(7)
    candidates = [FusionConfig(), FusionConfig(rrf_k=60.0, lexical_weight=0.5)]
    poor, _, _ = _fold(rng, 40, dense_quality=0.2, lexical_quality=0.2)
    good, _, _ = _fold(rng, 40, dense_quality=0.9, lexical_quality=0.8)
    poor_metrics = hybrid_lib.candidate_metrics(poor, candidates, RECALL_KS)
    good_metrics = hybrid_lib.candidate_metrics(good, candidates, RECALL_KS)

    def best(per_candidate):
        return max(np.mean([v[m].mean() for m in OBJECTIVE]) for v in per_candidate)
    on, scores = hybrid_lib.choose_spelling(poor_metrics, good_metrics, OBJECTIVE)
    assert on is True
    assert scores == {"with": pytest.approx(best(good_metrics)),
                      "without": pytest.approx(best(poor_metrics))}
    assert best(good_metrics) > best(poor_metrics)
    assert hybrid_lib.choose_spelling(good_metrics, poor_metrics, OBJECTIVE)[0] is False
    # The same lists both ways: a tie keeps the queries as typed.
    assert hybrid_lib.choose_spelling(good_metrics, good_metrics, OBJECTIVE)[0] is False


def test_ties_keep_the_earlier_candidate():
    same = {"recall@10": np.array([0.5, 1.0]), "recall@30": np.ones(2), "ndcg@10": np.ones(2)}
    assert hybrid_lib.choose([same, dict(same), dict(same)], OBJECTIVE)[0] == 0
    better = dict(same, **{"ndcg@10": np.array([1.0, 1.0 + 1e-9])})
    assert hybrid_lib.choose([same, better, dict(better)], OBJECTIVE)[0] == 1


def test_lists_round_trip_and_candidate_cache(tmp_path):
    lists, _, _ = _fold(np.random.RandomState(5), 12, 0.5, 0.5)
    lists.save(str(tmp_path / hybrid_lib.LISTS_FILE))
    back = hybrid_lib.FoldLists.load(str(tmp_path / hybrid_lib.LISTS_FILE))
    assert back.k == K and np.array_equal(back.dense_rows, lists.dense_rows)
    first = hybrid_lib.cached_candidate_metrics(str(tmp_path), fusion_choice.CANDIDATES,
                                                RECALL_KS)
    again = hybrid_lib.cached_candidate_metrics(str(tmp_path), fusion_choice.CANDIDATES,
                                                RECALL_KS)
    direct = hybrid_lib.candidate_metrics(lists, fusion_choice.CANDIDATES, RECALL_KS)
    chunked = hybrid_lib.candidate_metrics(lists, fusion_choice.CANDIDATES, RECALL_KS, chunk=5)
    for a, b, c, d in zip(first, again, direct, chunked):
        for metric in c:
            assert np.array_equal(a[metric], c[metric]) and np.array_equal(b[metric], c[metric])
            assert np.array_equal(d[metric], c[metric])


def test_a_candidate_with_its_own_lexical_list_is_refused():
    lists, _, _ = _fold(np.random.RandomState(5), 4, 0.5, 0.5)
    with pytest.raises(ValueError, match="lexical_k=50"):
        hybrid_lib.candidate_metrics(lists, [FusionConfig(lexical_k=50)], RECALL_KS)


def test_fold_index_is_built_with_dpsr_index_defaults():
    # The flags' defaults, read in a fresh process (dpsr index's flags would clash here).
    code = ("import json; from absl import flags; from dpsr_tf.cli import index; "
            "F = flags.FLAGS; print(json.dumps({n: F[n].default for n in ('index_factory', "
            "'num_shards', 'train_size', 'seed', 'nprobe', 'ef_search', 'refine_k_factor', "
            "'lexical', 'lexical_features', 'lexical_fields', 'bm25_k1', 'bm25_b')}))")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    build = IndexBuildConfig(**hybrid_lib.INDEX_BUILD)
    assert (build.factory, build.num_shards, build.train_size, build.seed, build.nprobe,
            build.ef_search, build.refine_k_factor) == (
        got["index_factory"], got["num_shards"], got["train_size"], got["seed"], got["nprobe"],
        got["ef_search"], got["refine_k_factor"])
    lexical = LexicalConfig()
    assert got["lexical"] is True
    assert (list(lexical.features), lexical.fields, lexical.k1, lexical.b) == (
        got["lexical_features"], got["lexical_fields"], got["bm25_k1"], got["bm25_b"])
