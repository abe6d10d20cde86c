"""Paired comparison of systems over the same requests (evaluation/paired.py) and the per-query
files it reads (evaluation/per_query.py), against hand-worked values and numpy references."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import paired
from dpsr_tf.evaluation import per_query

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_constant_difference_by_hand():
    # d = [1, 1, 1]: of the 8 sign assignments only +++ and --- reach |mean| 1 -> p = 2/8;
    # every bootstrap resample has mean 1.
    got = paired.paired_test([1, 1, 1], [0, 0, 0], "recall@10", "x", "y", num_samples=500)
    assert got.p_value == pytest.approx(0.25)
    assert (got.diff, got.ci_low, got.ci_high) == (1.0, 1.0, 1.0)
    assert (got.wins, got.losses, got.ties, got.requests) == (3, 0, 0, 3)
    assert (got.mean_a, got.mean_b, got.metric, got.a, got.b) == (1.0, 0.0, "recall@10", "x",
                                                                  "y")


def test_mixed_differences_by_hand():
    # d = [1, -1, 2, 0], mean 0.5: |s1 - s2 + 2 s3| >= 2 for 6 of the 8 signs of the non-zero
    # differences (the sum is 0 for (s1, s2, s3) = (-, +, +) and (+, -, -)); the zero's sign
    # doubles both counts -> p = 12/16.
    got = paired.paired_test([1, 0, 2, 0], [0, 1, 0, 0], num_samples=200)
    assert got.p_value == pytest.approx(0.75)
    assert got.diff == pytest.approx(0.5)
    assert (got.wins, got.losses, got.ties) == (2, 1, 1)


def test_random_sign_flips_match_exact_enumeration(monkeypatch):
    rng = np.random.RandomState(3)
    a, b = rng.rand(14), rng.rand(14) - 0.15
    exact = paired.paired_test(a, b, num_samples=10).p_value
    monkeypatch.setattr(paired, "EXACT_MAX_REQUESTS", 0)
    sampled = paired.paired_test(a, b, num_samples=40000, seed=1).p_value
    assert 0.0 < exact < 1.0
    assert sampled == pytest.approx(exact, abs=0.01)


def test_bootstrap_interval_matches_the_normal_interval_for_many_requests():
    rng = np.random.RandomState(0)
    a = rng.normal(0.5, 0.2, size=2000)
    b = a - rng.normal(0.02, 0.1, size=2000)
    got = paired.paired_test(a, b, num_samples=4000, seed=0)
    d = a - b
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    assert got.diff == pytest.approx(d.mean())
    assert got.ci_low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert got.ci_high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert got.p_value < 1e-3        # a 0.02 shift over 2,000 requests with sd 0.1
    again = paired.paired_test(a, b, num_samples=4000, seed=0)
    assert again == got              # seeded


@pytest.mark.parametrize("a, b, message", [
    ([1, 2], [1], "same requests"),
    ([], [], "at least one request"),
    ([1, np.nan], [0, 0], "finite"),
])
def test_bad_inputs_are_errors(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired.paired_test(a, b)


def test_compare_systems_pairs_and_baseline():
    per_system = {"dpsr": {"recall@100": np.array([1.0, 0.5, 1.0]),
                           "ndcg@10": np.array([0.3, 0.2, 0.1])},
                  "bm25": {"recall@100": np.array([0.5, 0.5, 0.0])},
                  "hybrid": {"recall@100": np.array([1.0, 1.0, 1.0])}}
    every = paired.compare_systems(per_system, num_samples=100)
    assert [(c.metric, c.a, c.b) for c in every] == [
        ("recall@100", "dpsr", "bm25"), ("recall@100", "dpsr", "hybrid"),
        ("recall@100", "bm25", "hybrid")]       # ndcg@10: only one system has it
    base = paired.compare_systems(per_system, ("recall@100",), baseline="bm25",
                                  num_samples=100)
    assert [(c.a, c.b) for c in base] == [("dpsr", "bm25"), ("hybrid", "bm25")]
    assert base[1].diff == pytest.approx(np.mean([0.5, 0.5, 1.0]))
    with pytest.raises(ValueError, match="baseline 'x'"):
        paired.compare_systems(per_system, baseline="x")
    with pytest.raises(ValueError, match="different requests"):
        paired.compare_systems({"a": {"m": np.zeros(2)}, "b": {"m": np.zeros(3)}})


def test_per_request_metrics_by_hand_and_their_mean():
    # request 0: relevant {3: gain 1, 7: gain 2}; ranked [7, 1, 3]
    # request 1: relevant {5: gain 1}; ranked [0, 1, 2] (a miss)
    retrieved = np.array([[7, 1, 3], [0, 1, 2]], np.int64)
    splits = np.array([0, 2, 3], np.int64)
    rows = np.array([3, 7, 5], np.int64)
    gains = np.array([1.0, 2.0, 1.0], np.float32)
    got = metrics_lib.per_request_metrics(retrieved, splits, rows, gains, recall_ks=(1, 3),
                                          ndcg_k=3, mrr_k=3)
    np.testing.assert_allclose(got["recall@1"], [0.5, 0.0])
    np.testing.assert_allclose(got["recall@3"], [1.0, 0.0])
    dcg = 2.0 + 1.0 / np.log2(4)               # gains 2 at rank 1, 1 at rank 3
    idcg = 2.0 + 1.0 / np.log2(3)
    np.testing.assert_allclose(got["ndcg@3"], [dcg / idcg, 0.0])
    np.testing.assert_allclose(got["mrr@3"], [1.0, 0.0])
    means = metrics_lib.retrieval_metrics(retrieved, splits, rows, gains, recall_ks=(1, 3),
                                          ndcg_k=3, mrr_k=3, with_per_request=True)
    assert means["recall@1"] == pytest.approx(0.25) and means["requests"] == 2
    assert means[metrics_lib.PER_REQUEST].keys() == got.keys()


class _EvalSet:
    queries = ["red shoe", "blue hat", "red shoe"]
    user_rows = np.array([-1, -1, 4])
    relevant_splits = np.array([0, 1, 3, 4])

    def __len__(self):
        return 3


def _write(tmp_path, name, systems):
    path = str(tmp_path / name)
    per_query.write_jsonl(path, "eval", _EvalSet(), systems)
    return path


def test_take_per_request_names_rankings_inside_a_system():
    results = {"dpsr": {"recall@10": 0.5, metrics_lib.PER_REQUEST: {"recall@10": [1]},
                        "served_" + metrics_lib.PER_REQUEST: {"recall@10": [0]}},
               "bm25": {"recall@10": 0.1}, "split": "eval"}
    got = per_query.take_per_request(results)
    assert got == {"dpsr": {"recall@10": [1]}, "dpsr_served": {"recall@10": [0]}}
    assert results["dpsr"] == {"recall@10": 0.5}     # taken out: the rest is JSON


def test_files_round_trip_and_align_on_the_requests_in_common(tmp_path):
    a = _write(tmp_path, "a.jsonl", {"dpsr": {"recall@100": np.array([1.0, 0.0, 0.5])}})
    b = _write(tmp_path, "b.jsonl", {"bm25": {"recall@100": np.array([0.0, 0.0, 1.0])}})
    lines = [json.loads(line) for line in open(a, encoding="utf-8")]
    assert lines[1] == {"system": "dpsr", "split": "eval", "request": 1, "query": "blue hat",
                        "user_row": -1, "relevant": 2, "recall@100": 0.0}
    keys, systems = per_query.align(per_query.read_jsonl([a, b]))
    assert keys == [("eval", "blue hat", -1), ("eval", "red shoe", -1), ("eval", "red shoe", 4)]
    np.testing.assert_array_equal(systems["dpsr"]["recall@100"], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(systems["bm25"]["recall@100"], [0.0, 0.0, 1.0])


def test_unreadable_or_doubled_files_name_the_line(tmp_path):
    a = _write(tmp_path, "a.jsonl", {"dpsr": {"recall@100": np.array([1.0, 0.0, 0.5])}})
    with pytest.raises(ValueError, match="label them: LABEL=PATH"):
        per_query.read_jsonl([a, a])
    labelled = per_query.read_jsonl([f"x={a}", f"y={a}"])     # two runs of one system
    assert sorted(labelled) == ["x", "y"] and labelled["x"] == labelled["y"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"system": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a per-query record"):
        per_query.read_jsonl([str(bad)])
    with pytest.raises(ValueError, match="two systems"):
        per_query.align(per_query.read_jsonl([a]))


def test_dpsr_compare_cli(tmp_path):
    a = _write(tmp_path, "a.jsonl", {"dpsr": {"recall@100": np.array([1.0, 1.0, 0.5])}})
    b = _write(tmp_path, "b.jsonl", {"bm25": {"recall@100": np.array([0.0, 0.0, 0.5])}})
    out = tmp_path / "cmp.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "compare",
                           f"--per_query={a},{b}", "--metrics=recall@100", "--baseline=bm25",
                           "--samples=200", f"--output={out}"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 requests answered by every system (dpsr, bm25)" in proc.stdout
    got = json.loads(out.read_text())["comparisons"]
    assert len(got) == 1 and got[0]["diff"] == pytest.approx(2.0 / 3.0)
    # d = [1, 1, 0] -> |mean| 2/3 reached by ++ and -- of the two non-zero: p = 2/4.
    assert got[0]["p_value"] == pytest.approx(0.5)
    proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "compare",
                           f"--per_query={a}"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0 and "need two systems" in proc.stderr
