"""DPR with all three feature groups on the tiny catalog: each session's click-stream history
equals the user's clicks before the session read from the raw interactions file (last N
kept), and the servable's `rerank` and `retrieve_rerank` signatures, given the user's profile
value and the whole raw history (with padding and an unknown id), score and order every
candidate as the evaluation does."""
import collections
import csv
import os

import numpy as np
import pytest

from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.ranking import model as ranker_model
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.ranking import train as ranker_train

HISTORY = 2


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _write_impressions(files, path, num_sessions=150, seed=0):
    """Session = one click (query q, user u, item r, time t) of the log whose (u, q) has no
    negative row: r (label 2) and 4 random other items (label 0), with user_id and timestamp.
    Returns {session_id: (query, user, t)}."""
    rng = np.random.default_rng(seed)
    items = [r["item_id"] for r in _rows(files["items"])]
    inter = _rows(files["interactions"])
    negative = {(r["user_id"], r["query"]) for r in inter if r["label"] == "negative"}
    clicks = [r for r in inter if r["label"] == "click"
              and (r["user_id"], r["query"]) not in negative]
    out = {}
    with open(path, "w", encoding="utf-8") as f:
        f.write("session_id\tquery\titem_id\tlabel\tuser_id\ttimestamp\tposition\n")
        for k in rng.choice(len(clicks), num_sessions, replace=False):
            c = clicks[k]
            others = [x for x in rng.choice(items, 5, replace=False) if x != c["item_id"]][:4]
            sid = f"s{k}"
            out[sid] = (c["query"], c["user_id"], int(c["timestamp"]))
            for pos, (item, label) in enumerate([(c["item_id"], 2)] + [(x, 0) for x in others]):
                f.write(f"{sid}\t{c['query']}\t{item}\t{label}\t{c['user_id']}\t"
                        f"{c['timestamp']}\t{pos}\n")
    return out


def _raw_history(files, user, query):
    """The user's clicked items strictly before their first click of `query`, in time order,
    from interactions.tsv (independent of prepare's history tables)."""
    inter = [r for r in _rows(files["interactions"]) if r["user_id"] == user]
    first = min(int(r["timestamp"]) for r in inter if r["query"] == query
                and r["label"] == "click")
    return [r["item_id"] for r in sorted(inter, key=lambda r: int(r["timestamp"]))
            if r["label"] == "click" and int(r["timestamp"]) < first]


@pytest.fixture(scope="module")
def full_ranker(tmp_path_factory, tiny_history_model, tiny_flat_index):
    work = tmp_path_factory.mktemp("dpr_user")
    spec, files = tiny_history_model.spec, tiny_history_model.input_files
    made = _write_impressions(files, str(work / "imp.tsv"))
    sessions_dir = str(work / "sessions")
    sessions_lib.prepare_sessions(spec.layout_dir, str(work / "imp.tsv"), sessions_dir,
                                  log=lambda *_: None)
    ranker_dir = str(work / "ranker")
    data = ranker_train.prepare_ranker_data(sessions_dir, tiny_history_model.model_dir,
                                            tiny_flat_index, ranker_dir,
                                            history_length=HISTORY, log=lambda *_: None)
    config = ranker_model.RankerConfig(
        token_embedding_dim=8, hidden_units=(16, 8), batch_size=32, learning_rate=0.1,
        feature_groups=("numeric", "text", "user"), user_embedding_dim=4,
        history_embedding_dim=4, profile_cross=True, **ranker_train.user_config(spec, HISTORY))
    ranker_train.train_ranker(data, ranker_dir, config, train_steps=30, log=lambda *_: None)
    scores = ranker_train.predict_scores(ranker_dir, data, data.eval_sessions,
                                         data.eval_features)
    path = export_servable(tiny_history_model.model_dir, tiny_flat_index,
                           str(work / "servable"),
                           servable=ServableConfig(default_k=10, max_k=50, hybrid=False),
                           ranker_dir=ranker_dir, rerank_n=6)
    return {"data": data, "scores": scores, "made": made, "files": files, "path": path,
            "ranker_dir": ranker_dir, "dpsr_dir": tiny_history_model.model_dir}


def test_session_history_is_the_last_n_clicks_before_the_session(full_ranker):
    data, files = full_ranker["data"], full_ranker["files"]
    ids = [r["item_id"] for r in _rows(files["items"])]
    checked = collections.Counter()
    for table, users in ((data.train_sessions, data.train_users),
                         (data.eval_sessions, data.eval_users)):
        for s in range(len(table)):
            query, user, _ = full_ranker["made"][table.session_ids[s]]
            want = _raw_history(files, user, query)[-HISTORY:]
            got = [ids[r] for r in users.history[s] if r >= 0]
            assert got == want, (table.session_ids[s], got, want)
            checked[len(want)] += 1
    assert checked[HISTORY] >= 20 and checked[0] >= 1          # truncated and empty rows
    assert users.unmatched == 0


def test_served_rerank_with_user_inputs_equals_the_evaluation(full_ranker):
    from tests.support.tf1_servable import Tf1Servable
    data, files = full_ranker["data"], full_ranker["files"]
    table = data.eval_sessions
    assert len(table) >= 5
    ids = [r["item_id"] for r in _rows(files["items"])]
    gender = {r["user_id"]: r["gender"] for r in _rows(files["users"])}
    queries, users, histories, cands = [], [], [], []
    for s in range(len(table)):
        query, user, _ = full_ranker["made"][table.session_ids[s]]
        queries.append(query)
        users.append(gender[user])
        # The whole raw history, with an unknown id and padding the servable must skip.
        histories.append(["no-such-item"] + _raw_history(files, user, query))
        cands.append([ids[r] for r in table.candidates(s)[0]])
    width = max(len(h) for h in histories) + 1
    histories = [h + [""] * (width - len(h)) for h in histories]
    n = max(len(c) for c in cands)
    cands = [c + [""] * (n - len(c)) for c in cands]
    servable = Tf1Servable(full_ranker["path"])
    try:
        got = servable.call("rerank", {"query": queries, "item_ids": cands,
                                       "user_gender": users, "user_history": histories})
        anonymous = servable.call("rerank", {"query": queries, "item_ids": cands})
    finally:
        servable.close()
    want = full_ranker["scores"]
    for s in range(len(table)):
        lo, hi = table.splits[s], table.splits[s + 1]
        np.testing.assert_allclose(got["scores"][s, :hi - lo], want[lo:hi], rtol=1e-5,
                                   atol=1e-5)
        order = np.argsort(-want[lo:hi], kind="stable")
        assert [x.decode() for x in got["ranked_item_ids"][s][:hi - lo]] == \
            [cands[s][j] for j in order]
    # The user inputs change the scores: without them the user group sees an unknown user.
    assert np.abs(anonymous["scores"] - got["scores"])[np.isfinite(got["scores"])].max() > 1e-4


def _served_inputs(full_ranker):
    """Per eval session: query, the user's gender and whole raw history (an unknown id first,
    "" padding), as a client sends them."""
    data, files = full_ranker["data"], full_ranker["files"]
    gender = {r["user_id"]: r["gender"] for r in _rows(files["users"])}
    queries, users, histories = [], [], []
    for sid in data.eval_sessions.session_ids:
        query, user, _ = full_ranker["made"][sid]
        queries.append(query)
        users.append(gender[user])
        histories.append(["no-such-item"] + _raw_history(files, user, query))
    width = max(len(h) for h in histories) + 1
    return queries, users, [h + [""] * (width - len(h)) for h in histories]


def test_served_retrieve_rerank_with_user_inputs_equals_the_evaluation(full_ranker):
    # The servable retrieves, then re-ranks its top rerank_n with all three groups computed
    # in-graph; the evaluation path (FeatureExtractor + Estimator.predict with the sessions'
    # profile and history) scores those same retrieved items: same scores, same order.
    from tests.support.tf1_servable import Tf1Servable
    from dpsr_tf.ranking import features as features_lib
    data = full_ranker["data"]
    table = data.eval_sessions
    queries, users, histories = _served_inputs(full_ranker)
    servable = Tf1Servable(full_ranker["path"])
    try:
        got = servable.call("retrieve_rerank", {"query": queries, "k": np.int32(10),
                                                "user_gender": users,
                                                "user_history": histories})
    finally:
        servable.close()
    row_of = {x: i for i, x in enumerate(_rows_ids(full_ranker["files"]))}
    assert got["item_ids"].shape == (len(table), 6)                 # rerank_n of k = 10
    served = [[row_of[x.decode()] for x in r] for r in got["item_ids"]]
    retrieved = sessions_lib.SessionTable.from_lists([
        {"query": table.queries[s], "user_row": int(table.user_rows[s]),
         "items": sorted(served[s]), "labels": [0.0] * len(served[s])}
        for s in range(len(table))])
    heads = ranker_train.query_heads(full_ranker["dpsr_dir"], data.layout_spec,
                                     retrieved.queries)
    extractor = features_lib.FeatureExtractor(data.tables, data.num_heads)
    try:
        feats = extractor.run(retrieved, heads, leave_own_out=False, log=None)
    finally:
        extractor.close()
    want = ranker_train.predict_scores(full_ranker["ranker_dir"], data, retrieved, feats,
                                       users=data.eval_users)
    for s in range(len(table)):
        lo, hi = retrieved.splits[s], retrieved.splits[s + 1]
        order = np.argsort(-want[lo:hi], kind="stable")
        assert served[s] == [int(retrieved.item_rows[lo + j]) for j in order], s
        np.testing.assert_allclose(got["scores"][s], want[lo:hi][order], rtol=1e-5, atol=1e-5)
    # What was re-ranked is retrieval's top rerank_n: the exact DPSR ranking (max over heads of
    # the inner product, numpy over the whole catalog), each item with its retrieval rank.
    dpsr = np.einsum("smd,nd->snm", heads, data.tables.item_embeddings).max(axis=2)
    for s in range(len(table)):
        top = np.argsort(-dpsr[s], kind="stable")[:6]
        assert sorted(served[s]) == sorted(top.tolist()), s
        rank = {int(r): k + 1 for k, r in enumerate(top)}
        assert got["retrieval_ranks"][s].tolist() == [rank[r] for r in served[s]], s


def _rows_ids(files):
    return [r["item_id"] for r in _rows(files["items"])]


@pytest.mark.parametrize("history,match", [
    ([[""] * 1025], "user_history must have at most 1024 items per row"),
    ([[""], [""]], "user_history must have one row per query"),
])
def test_bad_user_history_is_invalid_argument(full_ranker, history, match):
    import tensorflow as tf
    from tests.support.tf1_servable import Tf1Servable
    servable = Tf1Servable(full_ranker["path"])
    try:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            servable.call("rerank", {"query": ["w1 w2"], "item_ids": [["item0"]],
                                     "user_history": history})
    finally:
        servable.close()
