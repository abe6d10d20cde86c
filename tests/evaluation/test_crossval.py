"""`dpsr crossval` on a tiny seeded catalog: 2 query-hash folds prepared, trained (20 steps) and
evaluated (DPSR and BM25); the summary's mean/std equal numpy over the per-fold metrics; a rerun
resumes; other settings into the same directory are refused. With --hybrid added to the same
folds: each fold's index, served dense / lexical lists and the hybrid fused with the fusion chosen
on the fold's validation split, checked against fusion_choice.choose_fusion and a NumPy RRF."""
import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib
from dpsr_tf.evaluation import crossval as crossval_lib
from dpsr_tf.evaluation import crossval_hybrid as hybrid_lib
from dpsr_tf.evaluation import crossval_summary as summary_lib
from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.evaluation import paired as paired_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation.tie_metrics import per_request_tie_metrics
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.search.dense_feedback import DEFAULT as DEFAULT_FEEDBACK
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.fusion import FusionConfig, fuse_np
from tests.support.fusion_reference import fuse_by_hand, metrics_by_hand, split_relevance
from tests.support.tiny_model import write_tiny_dataset
from dpsr_tf.tokenization import TokenizerConfig
from dpsr_tf.training.config import TrainConfig
from tests.support import waiting

_EvalSet = collections.namedtuple("EvalSet", "relevant_splits relevant_rows relevant_gains")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = ModelConfig(num_heads=2, embedding_dim=16, token_embedding_dim=16,
                    item_hidden_units=(32,), query_hidden_units=(32,), query_projection_dim=16,
                    num_negatives=8, learning_rate=0.1)


def _config(paths, output, **kwargs):
    prepare = prepare_lib.PrepareConfig(
        items=paths["items"], users=paths["users"], interactions=paths["interactions"],
        output=output, tokenizer=TokenizerConfig(num_buckets=1024, num_oov_buckets=1),
        history_length=2, max_train_queries=kwargs.pop("max_train_queries", 0))
    train = kwargs.pop("train", None) or TrainConfig(
        layout_dir=output, model_dir=output, batch_size=16, train_steps=20,
        save_checkpoints_steps=20, eval_random_negatives=20, eval_steps=2,
        log_step_count_steps=20, throttle_secs=0, seed=0)
    settings = dict(folds=2, evaluation=evaluate_lib.EvalConfig(num_random=20), bm25=True)
    settings.update(kwargs)
    return crossval_lib.CrossvalConfig(output=output, prepare=prepare, model=MODEL, train=train,
                                       **settings)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("cv_tsv")), num_items=60,
                              num_users=8, num_queries=80, num_words=60, seed=1)


@pytest.fixture(scope="module")
def two_folds(tiny_paths, tmp_path_factory):
    os.environ.pop("TF_CONFIG", None)
    config = _config(tiny_paths, str(tmp_path_factory.mktemp("cv") / "run"),
                     max_train_queries=30)
    lines = []
    summary = crossval_lib.run(config, log=lines.append)
    return config, summary, lines


def test_each_fold_holds_out_its_md5_residue(two_folds):
    config, _, _ = two_folds
    held_out = []
    for fold in range(2):
        spec = layout_lib.load_layout_spec(os.path.join(config.output, f"fold_{fold}", "layout"))
        queries = layout_lib.load_queries(spec)
        eval_q = {queries[r] for r in layout_lib.read_records(spec, "eval")["query_row"]}
        train_q = {queries[r] for r in layout_lib.read_records(spec, "train")["query_row"]}
        assert all(split_lib.query_hash(q) % 2 == fold for q in eval_q)
        assert all(split_lib.query_hash(q) % 2 != fold for q in train_q)
        assert len(train_q) <= 30 and spec.split["max_train_queries"]["train_queries_kept"] == 30
        # The validation split (early stopping, choices) is carved from the fold's training
        # queries: none is held out by the fold, none trains.
        val_q = {queries[r] for r in layout_lib.read_records(spec, "validation")["query_row"]}
        assert val_q and all(split_lib.query_hash(q) % 2 != fold for q in val_q)
        assert not val_q & eval_q and not val_q & train_q
        assert len(val_q) == split_lib.validation_size(30, 0.1) == 7 == 30 - len(train_q)
        with open(os.path.join(config.output, f"fold_{fold}", "model", "dpsr_config.json"),
                  encoding="utf-8") as f:
            assert json.load(f)["train"]["eval_split"] == "validation"
        held_out.append(eval_q)
    assert not held_out[0] & held_out[1]


def test_summary_is_mean_and_std_of_the_fold_metrics(two_folds):
    config, summary, lines = two_folds
    with open(os.path.join(config.output, crossval_lib.SUMMARY_JSON), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    folds = []
    for fold in range(2):
        with open(os.path.join(config.output, f"fold_{fold}", "metrics.json"),
                  encoding="utf-8") as f:
            folds.append(json.load(f))
        assert folds[-1]["fold"] == fold and folds[-1]["split"]["fold"] == fold
    assert set(summary["systems"]) == {"dpsr", "bm25"}
    for system in ("dpsr", "bm25"):
        got = summary["systems"][system]
        assert set(summary_lib.TABLE_METRICS) - {"auc"} <= set(got)
        for name, stats in got.items():
            values = np.array([f[system][name] for f in folds], np.float64)
            np.testing.assert_allclose(stats["mean"], values.mean(), rtol=1e-12)
            np.testing.assert_allclose(stats["std"], values.std(ddof=1), rtol=1e-12, atol=1e-15)
            assert stats["values"] == values.tolist()
    assert "seconds" not in summary["systems"]["dpsr"]
    text = "\n".join(lines)
    assert "crossval fold 1/2 (md5 % 2 == 0): prepared" in text
    assert "crossval fold 2/2 (md5 % 2 == 1): bm25" in text
    assert "recall@100" in lines[-1] and "±" in lines[-1]


def test_paired_comparison_pools_every_held_out_request(two_folds):
    config, summary, _ = two_folds
    pooled = {"dpsr": [], "bm25": []}
    for fold in range(2):
        with open(os.path.join(config.output, f"fold_{fold}", "metrics.json"),
                  encoding="utf-8") as f:
            metrics = json.load(f)
        for system in pooled:
            values = metrics[summary_lib.PER_QUERY][system]["recall@100"]
            assert len(values) == metrics[system]["requests"]
            assert np.mean(values) == pytest.approx(metrics[system]["recall@100"])
            pooled[system].extend(values)
    got = {(c["metric"], c["a"], c["b"]): c for c in summary["paired"]}
    first = got[("recall@100", "dpsr", "bm25")]
    want = paired_lib.paired_test(pooled["dpsr"], pooled["bm25"], "recall@100", "dpsr", "bm25")
    assert first == want.to_json()
    assert first["requests"] == sum(summary["systems"]["dpsr"]["requests"]["values"])


def test_rerun_reuses_the_folds_and_other_settings_are_refused(two_folds, tiny_paths):
    config, summary, _ = two_folds
    lines = []
    again = crossval_lib.run(config, log=lines.append)
    assert again["systems"] == summary["systems"]
    assert sum("done earlier, reusing" in line for line in lines) == 2
    changed = _config(tiny_paths, config.output, max_train_queries=31)
    with pytest.raises(ValueError, match=r"other settings \(differences in \['prepare'\]"):
        crossval_lib.run(changed, log=lambda _: None)


def _checkpoints(model_dir):
    return sorted({n.split(".")[1] for n in os.listdir(model_dir)
                   if n.startswith("model.ckpt-")})


def test_each_fold_keeps_only_the_checkpoint_it_was_evaluated_with(two_folds):
    config, _, lines = two_folds
    for fold in range(2):
        with open(os.path.join(config.output, f"fold_{fold}", "metrics.json"),
                  encoding="utf-8") as f:
            metrics = json.load(f)
        kept = metrics["dpsr"]["checkpoint"]
        assert _checkpoints(metrics["model_dir"]) == [os.path.basename(kept).split(".")[1]]
        assert tf.train.latest_checkpoint(metrics["model_dir"]) == kept
    # Training saved step 0 and step 20; the evaluated one is step 20.
    assert sum("kept model.ckpt-20, the checkpoint evaluated; deleted 1 other(s)" in line
               for line in lines) == 2


def test_a_reused_fold_is_pruned_unless_told_not_to(two_folds):
    config, _, _ = two_folds
    model_dir = os.path.join(config.output, "fold_1", "model")
    for name in os.listdir(model_dir):      # an extra checkpoint, as a run before pruning left
        if name.startswith("model.ckpt-20."):
            shutil.copy(os.path.join(model_dir, name),
                        os.path.join(model_dir, name.replace("ckpt-20.", "ckpt-7.")))
    lines = []
    crossval_lib.run(dataclasses.replace(config, prune_checkpoints=False), log=lines.append)
    assert _checkpoints(model_dir) == ["ckpt-20", "ckpt-7"]
    assert not any("deleted" in line for line in lines)
    crossval_lib.run(config, log=lines.append)
    assert _checkpoints(model_dir) == ["ckpt-20"]
    assert sum("crossval fold 2/2 (md5 % 2 == 1): kept model.ckpt-20, the checkpoint "
               "evaluated; deleted 1 other(s)" in line for line in lines) == 1


def test_runs_recorded_before_the_tie_aware_switch_resume(two_folds):
    # EvalConfig.tie_aware (`dpsr evaluate --tie_aware`) is not a recorded setting: directories
    # written before it existed, and runs with it on, reuse their folds.
    config, _, _ = two_folds
    with open(os.path.join(config.output, crossval_lib.CONFIG_JSON), encoding="utf-8") as f:
        assert "tie_aware" not in json.load(f)["evaluation"]
    lines = []
    crossval_lib.run(dataclasses.replace(
        config, evaluation=dataclasses.replace(config.evaluation, tie_aware=True)),
        log=lines.append)
    assert sum("done earlier, reusing" in line for line in lines) == 2


def test_each_fold_distills_from_the_teacher_trained_on_its_own_folds(two_folds, tiny_paths,
                                                                     tmp_path):
    teacher, teacher_summary, _ = two_folds
    config = _config(tiny_paths, str(tmp_path / "student"), max_train_queries=30, bm25=False)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, teacher_dir=os.path.join(teacher.output, "fold_{fold}", "model")))
    summary = crossval_lib.run(config, log=lambda _: None)
    for fold in range(2):
        assert config.fold_train(fold).teacher_dir == teacher.fold_train(fold).model_dir
        caches = os.path.join(config.fold_dir(fold), "layout", "teacher_embeddings")
        (cache,) = os.listdir(caches)
        with open(os.path.join(caches, cache, "meta.json"), encoding="utf-8") as f:
            key = json.load(f)["key"]
        assert key["kind"] == "model"
        assert key["teacher_dir"] == os.path.abspath(teacher.fold_train(fold).model_dir)
        assert key["layout_dir"] == os.path.abspath(config.fold_train(fold).layout_dir)
    # The same prepare settings give the student the teacher's folds and held-out requests.
    assert summary["systems"]["dpsr"]["requests"]["values"] == \
        teacher_summary["systems"]["dpsr"]["requests"]["values"]


def test_a_trained_teacher_must_name_the_fold(two_folds, tiny_paths, tmp_path):
    teacher, _, _ = two_folds
    one_model = teacher.fold_train(0).model_dir
    with pytest.raises(ValueError, match=r"fits the layout it was trained on.*fold_\{fold\}"):
        _config(tiny_paths, str(tmp_path / "a"), train=dataclasses.replace(
            teacher.train, teacher_dir=one_model))
    (tmp_path / "t" / "fold_0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no teacher for folds \[1\]"):
        _config(tiny_paths, str(tmp_path / "b"), train=dataclasses.replace(
            teacher.train, teacher_dir=os.path.join(tmp_path, "t", "fold_{fold}")))


def test_summarize_folds_by_hand():
    folds = [{"dpsr": {"recall@100": 0.2, "requests": 10, "checkpoint": "a", "auc": 0.5},
              "bm25": {"recall@100": 0.6}},
             {"dpsr": {"recall@100": 0.4, "requests": 12, "checkpoint": "b",
                       "auc": float("nan")},
              "bm25": {"recall@100": 0.8}}]
    got = summary_lib.summarize_folds(folds)
    # mean (0.2 + 0.4) / 2 = 0.3; sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.141421...
    assert got["dpsr"]["recall@100"]["mean"] == pytest.approx(0.3)
    assert got["dpsr"]["recall@100"]["std"] == pytest.approx(0.1414213562)
    assert got["dpsr"]["requests"]["mean"] == 11.0
    assert "checkpoint" not in got["dpsr"] and "auc" not in got["dpsr"]   # text; NaN in a fold
    assert got["bm25"]["recall@100"]["values"] == [0.6, 0.8]


@pytest.mark.parametrize("kwargs,message", [
    ({"folds": 1}, "folds must be >= 2"),
    ({"evaluation": evaluate_lib.EvalConfig(split="train")}, "split 'eval'"),
    ({"train": TrainConfig(layout_dir="l", model_dir="m", hard_negatives_from="/m0")},
     "every fold has its own; dpsr crossval does not mine them"),
    ({"fusion_objective": ("recall@50",)}, r"measures recall at \[10, 100, 1000\] only"),
    ({"fusion_objective": ("auc",)}, "'auc' is not one of recall@N"),
])
def test_bad_config_is_an_error(tiny_paths, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(tiny_paths, str(tmp_path / "run"), **kwargs)


def test_output_that_is_not_a_crossval_is_refused(tiny_paths, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a dpsr crossval directory"):
        crossval_lib.run(_config(tiny_paths, str(tmp_path / "run")), log=lambda _: None)


def test_cli_rejects_one_fold(tiny_paths, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "crossval", f"--items={tiny_paths['items']}",
         f"--interactions={tiny_paths['interactions']}", f"--output={tmp_path / 'run'}",
         "--folds=1"], env=env, capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "dpsr crossval: error: --folds=1: must be >= 2" in proc.stderr


@pytest.fixture(scope="module")
def hybrid_folds(two_folds):
    """The same 2 trained folds with --hybrid added: the models are reused, each fold gets its
    index, served dense / lexical evaluation and lists, and the fusion is chosen on each fold's
    validation split."""
    config, _, _ = two_folds
    config = dataclasses.replace(config, hybrid=True)
    lines = []
    summary = crossval_lib.run(config, log=lines.append)
    return config, summary, lines


def test_hybrid_writes_the_fold_files_and_the_systems(hybrid_folds):
    config, summary, lines = hybrid_folds
    assert sum("done earlier, reusing" in line for line in lines) == 2   # no retraining
    for fold in range(2):
        fold_dir = os.path.join(config.output, f"fold_{fold}")
        for name in ("index/manifest.json", hybrid_lib.LISTS_FILE, hybrid_lib.CANDIDATES_FILE,
                     hybrid_lib.FEEDBACK_LISTS_FILE, hybrid_lib.FEEDBACK_CANDIDATES_FILE,
                     hybrid_lib.VALIDATION_LISTS_FILE, hybrid_lib.VALIDATION_CANDIDATES_FILE,
                     hybrid_lib.VALIDATION_FEEDBACK_LISTS_FILE,
                     hybrid_lib.VALIDATION_FEEDBACK_CANDIDATES_FILE, crossval_lib.HYBRID_JSON):
            assert os.path.isfile(os.path.join(fold_dir, name)), name
        with open(os.path.join(fold_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        assert {"dpsr", "bm25", "dpsr_served", "lexical"} <= set(metrics[summary_lib.PER_QUERY])
    assert list(summary["systems"]) == ["dpsr", "dpsr_served", "lexical", "bm25", "hybrid"]
    compared = {(c["metric"], c["a"], c["b"]) for c in summary["paired"]}
    for metric in paired_lib.DEFAULT_METRICS:
        for pair in (("hybrid", "dpsr_served"), ("hybrid", "lexical"),
                     ("dpsr_served", "lexical"), ("hybrid", "bm25")):
            assert (metric, *pair) in compared
    assert len(summary["hybrid"]["fusions"]) == 2
    assert "hybrid_self_chosen" in summary["hybrid"]["self_chosen_systems"]
    text = "\n".join(lines)
    assert summary["hybrid"]["chosen_on"] == ["validation", "validation"]
    assert "(chosen on validation)" in text and "optimistic" in text


def test_hybrid_fold_uses_the_fusion_its_validation_split_chooses_and_numpy_rrf(hybrid_folds):
    config, summary, _ = hybrid_folds
    recall_ks = config.evaluation.recall_ks

    def load(name):
        return [hybrid_lib.FoldLists.load(os.path.join(config.output, f"fold_{f}", name))
                for f in range(2)]
    lists, fed = load(hybrid_lib.LISTS_FILE), load(hybrid_lib.FEEDBACK_LISTS_FILE)
    val, val_fed = (load(hybrid_lib.VALIDATION_LISTS_FILE),
                    load(hybrid_lib.VALIDATION_FEEDBACK_LISTS_FILE))
    pooled = {"hybrid": [], "dpsr_served": []}
    for fold in range(2):
        # The validation lists hold the judgments of the fold's validation split, carved from
        # its training queries, none of them held out.
        layout = os.path.join(config.output, f"fold_{fold}", "layout")
        want_val = eval_set_lib.load_eval_set(layout, layout_lib.VALIDATION_SPLIT)
        held_out = eval_set_lib.load_eval_set(layout, layout_lib.EVAL_SPLIT)
        assert not set(want_val.queries) & set(held_out.queries)
        for got in (val[fold], val_fed[fold]):
            assert np.array_equal(got.relevant_splits, want_val.relevant_splits)
            assert np.array_equal(got.relevant_rows, want_val.relevant_rows)
        # Reference choice: the export-time chooser on the fold's validation lists alone,
        # without and with dense feedback (a tie keeps none), as `dpsr export
        # --dense_feedback=auto`.
        choices = []
        for variant in (val, val_fed):
            other = variant[fold]
            choices.append(fusion_choice.choose_fusion(
                other.dense_scores, other.dense_rows, lambda cfg, o=other: (o.lexical_scores,
                                                                            o.lexical_rows),
                _EvalSet(other.relevant_splits, other.relevant_rows, other.relevant_gains),
                other.k))
        use_feedback = choices[1].score > choices[0].score
        want = choices[use_feedback]
        with open(os.path.join(config.output, f"fold_{fold}", crossval_lib.HYBRID_JSON),
                  encoding="utf-8") as f:
            result = json.load(f)
        assert FusionConfig.from_json(result["fusion"]) == want.config
        assert summary["hybrid"]["fusions"][fold] == want.config.to_json()
        assert result["dense_feedback"] == (DEFAULT_FEEDBACK if use_feedback
                                            else FeedbackConfig()).to_json()
        assert len(result["candidate_scores"]) == 2 * len(fusion_choice.CANDIDATES)
        # Reference metrics: this fold's lists (with the chosen feedback) fused by hand.
        own = (fed if use_feedback else lists)[fold]
        cfg = want.config
        fused = fuse_by_hand(own.dense_scores, own.dense_rows, own.lexical_scores,
                             own.lexical_rows, own.k, cfg)
        rel, gains = split_relevance(own.relevant_splits, own.relevant_rows,
                                     own.relevant_gains)
        by_hand = metrics_by_hand(fused, rel, gains, recall_ks)
        for metric, values in by_hand.items():
            np.testing.assert_allclose(result["per_query"]["hybrid"][metric], values,
                                       rtol=1e-12, atol=1e-12)
            assert summary["systems"]["hybrid"][metric]["values"][fold] == pytest.approx(
                values.mean(), rel=1e-12)
        with open(os.path.join(config.output, f"fold_{fold}", "metrics.json"),
                  encoding="utf-8") as f:
            metrics = json.load(f)
        # The served dense per-request metrics are those of the kept dense lists (no feedback).
        served = metrics_by_hand(lists[fold].dense_rows, rel, gains, recall_ks)
        for metric, values in served.items():
            np.testing.assert_allclose(metrics[summary_lib.PER_QUERY]["dpsr_served"][metric],
                                       values, rtol=1e-12, atol=1e-12)
        pooled["hybrid"].extend(by_hand["recall@100"].tolist())
        pooled["dpsr_served"].extend(served["recall@100"].tolist())
    # The feedback lists differ from the plain ones (else the choice between them is moot).
    assert any((f.dense_rows != p.dense_rows).any() for f, p in zip(fed, lists))
    got = {(c["metric"], c["a"], c["b"]): c for c in summary["paired"]}
    want_pair = paired_lib.paired_test(pooled["hybrid"], pooled["dpsr_served"], "recall@100",
                                       "hybrid", "dpsr_served")
    assert got[("recall@100", "hybrid", "dpsr_served")] == want_pair.to_json()


def test_tie_aware_rows_score_the_served_lists_and_fuse_np_in_expectation(hybrid_folds):
    config, summary, lines = hybrid_folds
    recall_ks = tuple(config.evaluation.recall_ks)
    tie = summary["hybrid"]["tie_aware_systems"]
    assert list(tie) == ["dpsr_served", "lexical", "hybrid", "bm25"]
    assert "tie_aware_folds" not in summary["hybrid"]     # pooled, then dropped
    pooled = {"hybrid": [], "lexical": []}
    for fold in range(2):
        fold_dir = os.path.join(config.output, f"fold_{fold}")
        with open(os.path.join(fold_dir, crossval_lib.HYBRID_JSON), encoding="utf-8") as f:
            result = json.load(f)
        fusion = FusionConfig.from_json(result["fusion"])
        plain = hybrid_lib.FoldLists.load(os.path.join(fold_dir, hybrid_lib.LISTS_FILE))
        own = plain if not FeedbackConfig.from_json(result["dense_feedback"]).enabled else (
            hybrid_lib.FoldLists.load(os.path.join(fold_dir, hybrid_lib.FEEDBACK_LISTS_FILE)))
        rel = (plain.relevant_splits, plain.relevant_rows, plain.relevant_gains)
        # fuse_np (the rule one item at a time) gives the hybrid's scores and order.
        scores, rows, _ = fuse_np(own.dense_scores, own.dense_rows, own.lexical_scores,
                                  own.lexical_rows, own.k, fusion)
        # Items a list lacks tie after it: the catalog of the fold's layout.
        num_items = layout_lib.load_layout_spec(os.path.join(fold_dir, "layout")).num_items
        tied = dict(recall_ks=recall_ks, catalog_size=num_items)
        want = {"hybrid": per_request_tie_metrics(rows, scores, *rel, **tied),
                "lexical": per_request_tie_metrics(plain.lexical_rows, plain.lexical_scores,
                                                   *rel, **tied),
                "dpsr_served": per_request_tie_metrics(plain.dense_rows, plain.dense_scores,
                                                       *rel, **tied)}
        for system, values in want.items():
            for metric, v in values.items():
                assert tie[system][metric]["values"][fold] == pytest.approx(v.mean(),
                                                                           rel=1e-12)
        # bm25s ranks the whole catalog: a relevant item scoring s lands in the top k with
        # probability clip((k - #items above s) / #items at s, 0, 1) over the tied orders.
        spec = layout_lib.load_layout_spec(os.path.join(fold_dir, "layout"))
        eval_set, pairs = evaluate_lib.load_split(spec, config.evaluation)
        bm25 = evaluate_lib.BM25Scorer(spec, eval_set, pairs)
        full = bm25.score_requests(np.arange(len(eval_set)))
        expected = []
        for i in range(len(eval_set)):
            rows, _ = eval_set.relevant(i)
            s = full[i][rows][:, None]
            above, equal = (full[i] > s).sum(axis=1), (full[i] == s).sum(axis=1)
            expected.append(np.clip((100 - above) / equal, 0, 1).mean())
        assert tie["bm25"]["recall@100"]["values"][fold] == pytest.approx(np.mean(expected),
                                                                         rel=1e-9)
        pooled["hybrid"].extend(want["hybrid"]["ndcg@10"].tolist())
        pooled["lexical"].extend(want["lexical"]["ndcg@10"].tolist())
    got = {(c["metric"], c["a"], c["b"]): c for c in summary["hybrid"]["tie_aware_paired"]}
    assert set(got) == {(m, a, b) for m in paired_lib.DEFAULT_METRICS
                        for a, b in hybrid_lib.TIE_AWARE_PAIRS}
    assert got[("ndcg@10", "hybrid", "lexical")] == paired_lib.paired_test(
        pooled["hybrid"], pooled["lexical"], "ndcg@10", "hybrid", "lexical").to_json()
    assert any("tie-aware (expected over the orders of tied scores" in line for line in lines)


def test_the_tie_aware_bm25_of_a_fold_is_kept_and_read_back(hybrid_folds, monkeypatch):
    config, summary, _ = hybrid_folds
    for fold in range(2):
        assert os.path.isfile(os.path.join(config.output, f"fold_{fold}",
                                           hybrid_lib.TIE_AWARE_BM25_FILE))

    def recomputed(*_args, **_kwargs):
        raise AssertionError("the kept tie-aware bm25 was recomputed")
    monkeypatch.setattr(evaluate_lib, "tie_aware_bm25", recomputed)
    again = crossval_lib.run(config, log=lambda _: None)
    assert again["hybrid"]["tie_aware_systems"]["bm25"] == \
        summary["hybrid"]["tie_aware_systems"]["bm25"]
    # Another relevance threshold is another evaluation: computed again, not read.
    with pytest.raises(AssertionError, match="recomputed"):
        hybrid_lib.cached_tie_aware_bm25(
            os.path.join(config.output, "fold_0"), os.path.join(config.output, "fold_0",
                                                                "layout"),
            dataclasses.replace(config.evaluation, min_gain=2.0))


def test_nodense_feedback_chooses_among_the_plain_lists_only(hybrid_folds):
    config, _, _ = hybrid_folds
    summary = crossval_lib.run(dataclasses.replace(config, dense_feedback=False),
                               log=lambda _: None)
    assert summary["hybrid"]["dense_feedback"] == [FeedbackConfig().to_json()] * 2
    assert "dense feedback" not in summary["hybrid"]["fusion_rule"]
    for fold in range(2):
        with open(os.path.join(config.output, f"fold_{fold}", crossval_lib.HYBRID_JSON),
                  encoding="utf-8") as f:
            assert len(json.load(f)["candidate_scores"]) == len(fusion_choice.CANDIDATES)
    crossval_lib.run(config, log=lambda _: None)     # back to the default for later tests


def test_a_fold_without_the_feedback_lists_redoes_its_hybrid_stage(hybrid_folds):
    # A fold whose hybrid stage predates dense feedback has the plain lists only.
    config, _, _ = hybrid_folds
    os.remove(os.path.join(config.output, "fold_1", hybrid_lib.FEEDBACK_LISTS_FILE))
    lines = []   # without feedback the plain lists suffice
    crossval_lib.run(dataclasses.replace(config, dense_feedback=False), log=lines.append)
    assert not any("redoing" in line for line in lines)
    lines = []
    crossval_lib.run(config, log=lines.append)
    redone = ("crossval fold 2/2 (md5 % 2 == 1): its hybrid stage predates the dense feedback "
              "or validation lists; redoing it")
    assert [line for line in lines if "redoing" in line] == [redone]
    assert os.path.isfile(os.path.join(config.output, "fold_1", hybrid_lib.FEEDBACK_LISTS_FILE))


def test_a_fold_without_the_validation_lists_redoes_its_hybrid_stage(hybrid_folds):
    # A fold whose hybrid stage predates the choice on the validation split has no lists of it.
    config, _, _ = hybrid_folds
    path = os.path.join(config.output, "fold_0", hybrid_lib.VALIDATION_LISTS_FILE)
    os.remove(path)
    lines = []
    summary = crossval_lib.run(config, log=lines.append)
    assert [line for line in lines if "redoing" in line] == [
        "crossval fold 1/2 (md5 % 2 == 0): its hybrid stage predates the dense feedback or "
        "validation lists; redoing it"]
    assert os.path.isfile(path) and summary["hybrid"]["chosen_on"] == ["validation"] * 2


def test_a_run_without_hybrid_after_it_compares_dpsr_and_bm25_only(hybrid_folds):
    config, _, _ = hybrid_folds
    summary = crossval_lib.run(dataclasses.replace(config, hybrid=False), log=lambda _: None)
    assert set(summary["systems"]) == {"dpsr", "bm25"} and "hybrid" not in summary
    assert {(c["a"], c["b"]) for c in summary["paired"]} == {("dpsr", "bm25")}


def test_auto_spelling_is_chosen_on_each_folds_validation_lists(hybrid_folds):
    # The default, as `dpsr export --spelling=auto`: per fold, the best fusion (feedback off
    # and on) over its validation lists with the speller against without; a tie keeps the
    # queries as typed. Reference: the kept lists of both settings fused and scored again.
    config, summary, lines = hybrid_folds
    assert config.spelling == "auto"
    spelled = []
    for fold in range(2):
        fold_dir = os.path.join(config.output, f"fold_{fold}")
        with open(os.path.join(fold_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        choice = metrics[crossval_lib.HYBRID_SPELLING_CHOICE]
        assert choice["mode"] == "auto" and choice["on"] is metrics[crossval_lib.HYBRID_SPELLING]
        other = hybrid_lib.TYPED_SUFFIX if choice["on"] else hybrid_lib.SPELLED_SUFFIX
        best = {}
        for on, suffix in ((choice["on"], ""), (not choice["on"], other)):
            per_candidate = [
                values for name in (hybrid_lib.VALIDATION_LISTS_FILE,
                                    hybrid_lib.VALIDATION_FEEDBACK_LISTS_FILE)
                for values in hybrid_lib.candidate_metrics(
                    hybrid_lib.FoldLists.load(os.path.join(fold_dir,
                                                           hybrid_lib.suffixed(name, suffix))),
                    fusion_choice.CANDIDATES, config.evaluation.recall_ks)]
            best[on] = max(np.mean([values[m].mean() for m in config.fusion_objective])
                           for values in per_candidate)
        assert choice["scores"]["with"] == pytest.approx(best[True], abs=1e-12)
        assert choice["scores"]["without"] == pytest.approx(best[False], abs=1e-12)
        assert choice["on"] is bool(best[True] > best[False])
        spelled.append(choice["on"])
    assert summary["hybrid"]["spelling"] == spelled
    assert summary["hybrid"]["spelling_mode"] == "auto"
    assert sum("(--spelling=auto)" in line for line in lines[-1:]) == 1


def test_rerun_with_another_spelling_redoes_the_hybrid_stage(hybrid_folds):
    # Reusing lists scored with another setting would label spelled numbers as typed ones.
    config, _, _ = hybrid_folds
    typed = dataclasses.replace(config, spelling="off")
    stale = {}
    for fold in range(2):
        fold_dir = os.path.join(config.output, f"fold_{fold}")
        stale[fold] = os.stat(os.path.join(fold_dir, hybrid_lib.CANDIDATES_FILE)).st_mtime_ns
    lines = []
    crossval_lib.run(typed, log=lines.append)
    assert sum("its hybrid stage was made with --spelling=auto; redoing it with "
               "--spelling=off" in line for line in lines) == 2
    for fold in range(2):
        fold_dir = os.path.join(config.output, f"fold_{fold}")
        with open(os.path.join(fold_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        assert metrics[crossval_lib.HYBRID_SPELLING] is False
        assert metrics[crossval_lib.HYBRID_SPELLING_CHOICE] == {
            "mode": "off", "on": False, "scores": {}, "note": "--spelling=off"}
        # The fusion candidates were fused again from the new lists, not read from the cache,
        # and the other setting's validation lists of the auto choice are gone.
        assert os.stat(os.path.join(fold_dir, hybrid_lib.CANDIDATES_FILE)).st_mtime_ns != \
            stale[fold]
        assert not any(name.endswith((hybrid_lib.TYPED_SUFFIX + ".npz",
                                      hybrid_lib.SPELLED_SUFFIX + ".npz"))
                       for name in os.listdir(fold_dir))
    lines = []
    crossval_lib.run(typed, log=lines.append)        # the same setting again: nothing redone
    assert not any("redoing" in line for line in lines)
    # A stage recorded before the modes (a bool only) counts as "on" / "off".
    for fold in range(2):
        path = os.path.join(config.output, f"fold_{fold}", "metrics.json")
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
        del metrics[crossval_lib.HYBRID_SPELLING_CHOICE]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(metrics, f)
    lines = []
    crossval_lib.run(typed, log=lines.append)
    assert not any("redoing" in line for line in lines)
    crossval_lib.run(config, log=lambda _: None)     # back to auto for any later test


def test_bad_spelling_mode_is_an_error(tiny_paths, tmp_path):
    with pytest.raises(ValueError, match=r"spelling=True: must be one of \['auto', 'on', 'off'\]"):
        _config(tiny_paths, str(tmp_path / "run"), spelling=True)


def test_zero_shot_adds_the_untrained_encoder_and_its_hybrid_per_fold(hybrid_folds):
    from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
    config, _, _ = hybrid_folds
    config = dataclasses.replace(config, zero_shot=True)
    lines = []
    summary = crossval_lib.run(config, log=lines.append)
    assert sum("done earlier, reusing" in line for line in lines) == 2     # no retraining
    assert list(summary["systems"])[-2:] == list(crossval_lib.ZERO_SHOT_SYSTEMS)
    compared = {(c["metric"], c["a"], c["b"]) for c in summary["paired"]}
    for pair in (("hybrid", "zero_shot_hybrid"), ("dpsr", "zero_shot"),
                 ("zero_shot_hybrid", "zero_shot")):
        assert ("recall@100", *pair) in compared
    pooled = {"dpsr": [], "zero_shot": []}
    with TextEmbedder() as embedder:
        for fold in range(2):
            with open(os.path.join(config.output, f"fold_{fold}", "metrics.json"),
                      encoding="utf-8") as f:
                metrics = json.load(f)
            # Reference: cosines of the encoder's embeddings, ranked by numpy, scored by hand.
            layout = metrics["layout_dir"]
            held_out = eval_set_lib.load_eval_set(layout, layout_lib.EVAL_SPLIT)
            titles = list(layout_lib.load_item_table(layout_lib.load_layout_spec(layout)).titles)
            scores = embedder.embed(list(held_out.queries)) @ embedder.embed(titles).T
            rows = np.argsort(-scores, axis=1, kind="stable")
            rel, gains = split_relevance(held_out.relevant_splits, held_out.relevant_rows,
                                         held_out.relevant_gains)
            want = metrics_by_hand(rows, rel, gains, config.evaluation.recall_ks)
            got = metrics[summary_lib.PER_QUERY]["zero_shot"]
            for metric, values in want.items():
                np.testing.assert_allclose(got[metric], values, atol=1e-9)
                assert summary["systems"]["zero_shot"][metric]["values"][fold] == \
                    pytest.approx(values.mean(), abs=1e-9)
            assert len(metrics[summary_lib.PER_QUERY]["zero_shot_hybrid"]["recall@100"]) == \
                len(rel)
            pooled["dpsr"] += metrics[summary_lib.PER_QUERY]["dpsr"]["recall@100"]
            pooled["zero_shot"] += want["recall@100"].tolist()
    got = {(c["metric"], c["a"], c["b"]): c for c in summary["paired"]}
    assert got[("recall@100", "dpsr", "zero_shot")] == paired_lib.paired_test(
        pooled["dpsr"], pooled["zero_shot"], "recall@100", "dpsr", "zero_shot").to_json()
    lines = []
    crossval_lib.run(config, log=lines.append)       # done: nothing evaluated again
    assert not any("zero-shot baselines in" in line for line in lines)
