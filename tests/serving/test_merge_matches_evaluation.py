"""The proxy's shard merge (serving/merge.py merge_topk) and the offline evaluation's merge
(evaluation/served.py merge_shards_np) return the same top-k for the same shard answers, and both
equal a brute-force top-k of the pooled answers."""
import numpy as np
import pytest

from dpsr_tf.evaluation.served import merge_shards_np
from dpsr_tf.serving.proxy.merge import merge_topk

NUM_ITEMS, NUM_SHARDS, BATCH, SHARD_K = 60, 3, 6, 7


def _shard_answers(seed: int, ties: bool):
    """Per shard (item ids [B, SHARD_K] bytes with b"" padding, scores, item rows with -1
    padding): each shard's exact top SHARD_K over its items (item i lives in shard i % S); the
    last shard holds only 4 items for even rows, so those answers are padded."""
    rng = np.random.RandomState(seed)
    scores = rng.normal(size=(BATCH, NUM_ITEMS)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)  # many equal scores, within and across shards
    answers = []
    for s in range(NUM_SHARDS):
        ids = np.full((BATCH, SHARD_K), b"", dtype=object)
        out_scores = np.full((BATCH, SHARD_K), -np.inf, np.float32)
        rows = np.full((BATCH, SHARD_K), -1, np.int64)
        for b in range(BATCH):
            items = np.arange(s, NUM_ITEMS, NUM_SHARDS)
            if s == NUM_SHARDS - 1 and b % 2 == 0:
                items = items[:4]
            order = np.argsort(-scores[b, items], kind="stable")[:SHARD_K]
            top = items[order]
            ids[b, :len(top)] = [f"item{i}".encode() for i in top]
            out_scores[b, :len(top)] = scores[b, top]
            rows[b, :len(top)] = top
        answers.append((ids, out_scores, rows))
    return answers


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 5, 10, 25])
def test_proxy_and_evaluation_merge_the_same_top_k(k, ties):
    answers = _shard_answers(seed=7 + k, ties=ties)
    proxy = merge_topk([{"item_ids": ids, "scores": sc} for ids, sc, _ in answers], k)
    ev_scores, ev_rows = merge_shards_np([sc for _, sc, _ in answers],
                                         [rows for _, _, rows in answers], k)
    ev_ids = np.where(ev_rows >= 0, np.char.add("item", ev_rows.astype(str)).astype(object),
                      "")
    ev_ids = np.vectorize(lambda x: x.encode())(ev_ids).astype(object)
    width = proxy["item_ids"].shape[1]
    assert width <= k and ev_ids.shape == (BATCH, k)
    # The proxy trims columns that are padding in every row; the evaluation pads to k.
    assert (ev_ids[:, width:] == b"").all()
    np.testing.assert_array_equal(proxy["item_ids"], ev_ids[:, :width])
    np.testing.assert_array_equal(proxy["scores"], ev_scores[:, :width])
    for b in range(BATCH):  # brute force over the pooled answers
        pooled = sorted(float(sc[b, j]) for _, sc, rows in answers for j in range(SHARD_K)
                        if rows[b, j] >= 0)[::-1][:k]
        got = [float(x) for x in ev_scores[b] if np.isfinite(x)]
        assert got == pooled
        if not ties:
            names = {f"item{r}".encode(): float(sc[b, j]) for _, sc, rows in answers
                     for j, r in enumerate(rows[b]) if r >= 0}
            want = sorted(names, key=lambda n: -names[n])[:k]
            assert [x for x in proxy["item_ids"][b] if x] == want
