"""Choosing the hybrid fusion on the build's own split (evaluation/fusion_choice.py): the choice
is the best candidate by the objective, never below either list alone, scored independently
here with metrics.retrieval_metrics over the raw lists."""
import collections

import numpy as np
import pytest

from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.search.dense_feedback import DEFAULT as DEFAULT_FEEDBACK, FeedbackConfig
from dpsr_tf.search.fusion import FusionConfig

EvalSet = collections.namedtuple("EvalSet", "relevant_splits relevant_rows relevant_gains")
K = 20
NUM_ITEMS = 200


def _eval_set(relevant):
    splits = np.cumsum([0] + [len(r) for r in relevant]).astype(np.int64)
    rows = np.concatenate([sorted(r) for r in relevant]).astype(np.int64)
    return EvalSet(splits, rows, np.ones(len(rows), np.float32))


def _ranked(rng, relevant, quality):
    """[Q, K] rows where each relevant item is placed near the top with probability
    `quality`, the rest random; scores descending."""
    rows = []
    for rel in relevant:
        hits = [r for r in rel if rng.rand() < quality]
        rest = [r for r in rng.permutation(NUM_ITEMS) if r not in hits]
        rows.append((hits + rest)[:K])
    rows = np.array(rows, np.int64)
    scores = np.tile(np.linspace(1.0, 0.1, K, dtype=np.float32), (len(rows), 1))
    return scores, rows


def _score(rows, eval_set):
    got = metrics_lib.retrieval_metrics(rows, eval_set.relevant_splits, eval_set.relevant_rows,
                                        eval_set.relevant_gains, recall_ks=(10, 20))
    return np.mean([got["recall@10"], got["recall@20"], got["ndcg@10"]])


@pytest.mark.parametrize("dense_quality, lexical_quality", [(0.9, 0.1), (0.1, 0.9),
                                                            (0.5, 0.5)])
def test_choice_is_never_below_either_list(dense_quality, lexical_quality):
    rng = np.random.RandomState(7)
    relevant = [rng.choice(NUM_ITEMS, size=rng.randint(1, 4), replace=False)
                for _ in range(60)]
    eval_set = _eval_set(relevant)
    dense = _ranked(rng, relevant, dense_quality)
    lexical = _ranked(rng, relevant, lexical_quality)
    objective = ("recall@10", "recall@20", "ndcg@10")
    choice = fusion_choice.choose_fusion(*dense, lambda cfg: lexical, eval_set, K,
                                         objective=objective)
    best_single = max(_score(dense[1], eval_set), _score(lexical[1], eval_set))
    assert choice.score >= best_single - 1e-12
    assert choice.score == max(c["score"] for c in choice.candidates)
    assert len(choice.candidates) == len(fusion_choice.CANDIDATES) == 13
    assert {FusionConfig.from_json(c["fusion"]).rule for c in choice.candidates} == {
        "rrf", "blend"}
    by_name = {fusion_choice.describe(FusionConfig.from_json(c["fusion"])): c
               for c in choice.candidates}
    # The single-list candidates reproduce the raw lists' scores exactly.
    assert by_name["dense only"]["score"] == pytest.approx(_score(dense[1], eval_set))
    assert by_name["lexical only"]["score"] == pytest.approx(_score(lexical[1], eval_set))
    if dense_quality > 0.8:
        assert choice.config.lexical_weight < choice.config.dense_weight
    if lexical_quality > 0.8:
        assert choice.config.lexical_weight >= choice.config.dense_weight


def test_ties_keep_the_earlier_candidate_and_lexical_lists_are_fetched_once_per_setting():
    relevant = [[1], [2]]
    rows = np.array([[1, 2, 3], [2, 1, 3]], np.int64)
    scores = np.array([[3.0, 2.0, 1.0]] * 2, np.float32)
    calls = []

    def lexical(cfg):
        calls.append((cfg.lexical_k, cfg.lexical_min_score))
        return scores, rows

    candidates = (FusionConfig(), FusionConfig(rrf_k=60.0), FusionConfig(lexical_k=2))
    choice = fusion_choice.choose_fusion(scores, rows, lexical, _eval_set(relevant), 3,
                                         candidates, objective=("recall@1",))
    assert choice.config == FusionConfig()             # all three tie at recall@1 = 1
    assert calls == [(0, 0.0), (2, 0.0)]
    assert "<- chosen" in choice.table().splitlines()[1]


def test_an_objective_metric_it_cannot_compute_is_an_error():
    rows = np.array([[1, 2]], np.int64)
    scores = np.array([[1.0, 0.5]], np.float32)
    with pytest.raises(ValueError, match="auc"):
        fusion_choice.choose_fusion(scores, rows, lambda cfg: (scores, rows),
                                    _eval_set([[1]]), 2, objective=("recall@1", "auc"))


def test_the_objective_decides_between_recall_and_the_top_of_the_list():
    """Hand-worked: one request, items 1 and 2 relevant, k = 3. Dense [1, 5, 6] holds item 1
    first; lexical [2, 7, 8] holds item 2 first. Dense only: recall@3 1/2. RRF k = 5 with
    equal weights: items 1 and 2 score 1/6 (tied: the dense list's first), 5 and 7 score 1/7:
    fused [1, 2, 5], recall@3 1. By recall@3 the fusion wins; by mrr@10 both lists score 1
    (a hit at rank 1) and the earlier candidate, dense only, is kept."""
    eval_set = _eval_set([[1, 2]])
    dense = (np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[1, 5, 6]], np.int64))
    lexical = (np.array([[9.0, 8.0, 7.0]], np.float32), np.array([[2, 7, 8]], np.int64))
    fused = FusionConfig(lexical_weight=1.0)
    candidates = (FusionConfig(lexical_weight=0.0), fused)

    def choose(objective):
        return fusion_choice.choose_fusion(*dense, lambda cfg: lexical, eval_set, 3,
                                           candidates, objective=objective)

    by_recall = choose(("recall@3",))
    assert by_recall.config == fused and by_recall.score == 1.0
    assert [c["recall@3"] for c in by_recall.candidates] == [0.5, 1.0]
    by_mrr = choose(("mrr@10",))
    assert by_mrr.config == FusionConfig(lexical_weight=0.0) and by_mrr.score == 1.0
    assert by_mrr.objective == ("mrr@10",)


@pytest.mark.parametrize("names,expected", [
    (["recall@100", "recall@1000"], ("recall@100", "recall@1000")),
    ([" Recall@100 ", "NDCG@10", ""], ("recall@100", "ndcg@10")),
    (list(fusion_choice.OBJECTIVE), fusion_choice.OBJECTIVE),
])
def test_parse_objective(names, expected):
    assert fusion_choice.parse_objective(names) == expected


@pytest.mark.parametrize("names,message", [
    ([], "names no metric"), ([""], "names no metric"),
    (["recall@0"], "'recall@0' is not one of"), (["ndcg@5"], "'ndcg@5' is not one of"),
    (["auc"], "'auc' is not one of"), (["recall@100", "recall@100"], "names a metric twice"),
])
def test_a_bad_objective_is_refused_before_any_work(names, message):
    with pytest.raises(ValueError, match=message):
        fusion_choice.parse_objective(names)


def test_choice_for_a_servable_with_rewrites_fuses_the_merged_lexical_list(
        tiny_history_model, tiny_flat_index, tmp_path):
    """With a rewrite table, every candidate is scored on the lexical list the servable will
    fuse: the query's BM25 list merged with its rewrites' (merge_np), recomputed here from the
    searcher's raw lists; queries without an entry keep their own list."""
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import hybrid as hybrid_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting import table  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import fuse_np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.rewrite_merge import RewriteConfig, merge_np  # pylint: disable=import-outside-toplevel
    model_dir, spec = tiny_history_model.model_dir, tiny_history_model.spec
    quiet = lambda *_: None
    run = hybrid_lib.open_hybrid(model_dir, tiny_flat_index, cfg=evaluate_lib.EvalConfig(
        split="validation", num_random=0), log=quiet)
    eval_set, titles = run.eval_set, layout_lib.load_item_table(spec).titles
    # Every other request's query gets one rewrite: the title of one of its relevant items
    # (its first, so the rewrite finds it); the others have no entry.
    rewritten = {}
    for i, query in enumerate(eval_set.queries):
        if i % 2 == 0 and table.normalize_query(query) not in rewritten:
            rewritten[table.normalize_query(query)] = titles[
                eval_set.relevant_rows[eval_set.relevant_splits[i]]]
    path = str(tmp_path / "rewrites.tsv")
    table.write_table(path, [(q, [(r, -1.0)]) for q, r in rewritten.items()])
    cfg = RewriteConfig(max_rewrites=2, rewrite_weight=0.5, combine="sum")

    with_table = fusion_choice.choose_for_index(model_dir, tiny_flat_index, log=quiet,
                                                rewrite_table=path, rewrites=cfg)
    without = fusion_choice.choose_for_index(model_dir, tiny_flat_index, log=quiet)

    queries = list(eval_set.queries)
    texts = [[rewritten.get(table.normalize_query(q), ""), ""] for q in queries]
    rel = (eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains)
    for got, cand in zip(with_table.candidates, fusion_choice.CANDIDATES):
        k = cand.lexical_k or run.k
        own_s, own_r = run.searcher.search(queries, k, cand.lexical_min_score)
        rw_s, rw_r = run.searcher.search([t for row in texts for t in row], k,
                                         cand.lexical_min_score)
        rw_s, rw_r = rw_s.reshape(len(queries), 2, k), rw_r.reshape(len(queries), 2, k)
        empty = np.array([[t == "" for t in row] for row in texts])
        rw_s[empty], rw_r[empty] = -np.inf, -1
        m_s, m_r, _ = merge_np(own_s, own_r, rw_s, rw_r, k, 0.5, "sum")
        _, fused, _ = fuse_np(run.dense_scores, run.dense_rows, m_s, m_r, run.k, cand)
        want = metrics_lib.retrieval_metrics(fused, *rel, recall_ks=(100, 1000))
        for metric in fusion_choice.OBJECTIVE:
            assert got[metric] == pytest.approx(want[metric], abs=1e-12), (cand, metric)
    # The table was read: the lexical-only candidate ranks the relevant items higher (the
    # tiny catalog's recall@100 is already 1).
    lexical_only = [i for i, c in enumerate(fusion_choice.CANDIDATES) if c.dense_weight == 0]
    assert len(lexical_only) == 1
    assert (with_table.candidates[lexical_only[0]]["ndcg@10"]
            > without.candidates[lexical_only[0]]["ndcg@10"] + 0.01)
    assert with_table.score == max(c["score"] for c in with_table.candidates)
    with pytest.raises(ValueError, match="rewrites.tsv:1"):
        bad = tmp_path / "bad" / "rewrites.tsv"
        bad.parent.mkdir()
        bad.write_text("query without fields\n", encoding="utf-8")
        fusion_choice.choose_for_index(model_dir, tiny_flat_index, log=quiet,
                                       rewrite_table=str(bad), rewrites=cfg)


def _without_times(result):
    """A result without its wall-clock fields (keys ending in "seconds")."""
    if isinstance(result, dict):
        return {k: _without_times(v) for k, v in result.items() if not k.endswith("seconds")}
    return result


@pytest.mark.parametrize("feedbacks,recall_ks,split", [
    ((FeedbackConfig(),), (10, 100, 1000), "eval"), ((DEFAULT_FEEDBACK,), (10, 100, 1000), "eval"),
    ((FeedbackConfig(), DEFAULT_FEEDBACK), (10, 100, 1000), "eval"),
    ((FeedbackConfig(),), (10, 50), "eval"),
    # Evaluated on the split the choice is made on: the lists of the choice are reused.
    ((FeedbackConfig(), DEFAULT_FEEDBACK), (10, 100, 1000), "validation")])
def test_choose_and_evaluate_equals_choosing_then_evaluating(tiny_history_model, tiny_flat_index,
                                                             feedbacks, recall_ks, split):
    """`dpsr demo`'s stage 6: the choice (speller, fusion, feedback) on the validation split and
    the chosen servable's evaluation on cfg's split equal choose_with_spelling followed by
    evaluate_hybrid, which opens the model and index again."""
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import hybrid as hybrid_lib  # pylint: disable=import-outside-toplevel
    model_dir, quiet = tiny_history_model.model_dir, lambda *_: None
    cfg = evaluate_lib.EvalConfig(num_random=64, recall_ks=recall_ks, split=split)
    choice, spelling, scores, evaluation = fusion_choice.choose_and_evaluate(
        model_dir, tiny_flat_index, cfg=cfg, log=quiet, feedbacks=feedbacks)
    want = fusion_choice.choose_with_spelling(model_dir, tiny_flat_index, log=quiet,
                                              feedbacks=feedbacks)
    assert (choice, spelling, scores) == want
    assert choice.feedback == (DEFAULT_FEEDBACK if feedbacks == (DEFAULT_FEEDBACK,)
                               else choice.feedback)
    assert _without_times(evaluation) == _without_times(hybrid_lib.evaluate_hybrid(
        model_dir, tiny_flat_index, cfg=cfg, fusion=choice.config, log=quiet,
        spelling=spelling, feedback=choice.feedback))


def test_choices_read_the_validation_split_never_the_eval_split(tiny_history_model,
                                                                tiny_flat_index, monkeypatch):
    """Every opening the choice makes scores the validation split's requests (by query: none
    is an eval query); `choose_and_evaluate` reports the eval split's requests."""
    from dpsr_tf.data import eval_set as eval_set_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import hybrid as hybrid_lib  # pylint: disable=import-outside-toplevel
    spec, model_dir = tiny_history_model.spec, tiny_history_model.model_dir
    validation = eval_set_lib.load_eval_set(spec, "validation")
    evals = eval_set_lib.load_eval_set(spec, "eval")
    assert not set(validation.query_rows.tolist()) & set(evals.query_rows.tolist())
    opened, real = [], hybrid_lib.open_hybrid

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        opened.append(run.eval_set.query_rows.tolist())
        return run
    monkeypatch.setattr(hybrid_lib, "open_hybrid", spy)
    quiet = lambda *_: None
    choice, _, _ = fusion_choice.choose_with_spelling(model_dir, tiny_flat_index, log=quiet)
    assert choice.split == "validation" and choice.requests == len(validation)
    assert opened and all(rows == validation.query_rows.tolist() for rows in opened)
    opened.clear()
    choice, _, _, result = fusion_choice.choose_and_evaluate(
        model_dir, tiny_flat_index, cfg=evaluate_lib.EvalConfig(num_random=0), log=quiet)
    assert choice.split == "validation" and choice.requests == len(validation)
    assert opened[-1] == evals.query_rows.tolist()         # the evaluation, after the choice
    assert all(rows == validation.query_rows.tolist() for rows in opened[:-1])
