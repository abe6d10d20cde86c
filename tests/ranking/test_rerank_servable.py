"""DPR end to end on a tiny catalog: sessions -> features -> train-ranker -> export with the
re-ranking stage; the SavedModel, loaded in a fresh process after a move, scores candidates
exactly as the Estimator does, and a real model server answers a retrieve_rerank request."""
import os
import shutil

import numpy as np
import pytest

from dpsr_tf.ranking import model as ranker_model
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.ranking import train as ranker_train
from dpsr_tf.indexing import catalog_index
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from tests.support.fresh_python import run_fresh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_impressions(items_tsv: str, path: str, num_sessions: int = 160, seed: int = 0):
    """Session i: a query of 2 words of item r's title; candidates r (label 2), an item of the
    same category (label 1) and 3 random items (label 0), shown in a random order."""
    rng = np.random.default_rng(seed)
    rows = [line.rstrip("\n").split("\t") for line in open(items_tsv, encoding="utf-8")][1:]
    ids = [r[0] for r in rows]
    words = [r[1].split() for r in rows]
    cats = np.array([r[3] for r in rows])
    with open(path, "w", encoding="utf-8") as f:
        f.write("session_id\tquery\titem_id\tlabel\tposition\n")
        for s in range(num_sessions):
            r = int(rng.integers(len(ids)))
            query = " ".join(rng.choice(words[r][2:], size=2, replace=False))
            same = [i for i in np.flatnonzero(cats == cats[r]) if i != r]
            cands = [(r, 2), (int(rng.choice(same)), 1)]
            cands += [(int(i), 0) for i in rng.choice(len(ids), size=3, replace=False)
                      if i != r and i != cands[1][0]]
            for pos, k in enumerate(rng.permutation(len(cands))):
                f.write(f"s{s}\t{query}\t{ids[cands[k][0]]}\t{cands[k][1]}\t{pos}\n")


@pytest.fixture(scope="module")
def ranker(tmp_path_factory, tiny_history_model, tiny_flat_index):
    work = tmp_path_factory.mktemp("dpr")
    spec, model_dir = tiny_history_model.spec, tiny_history_model.model_dir
    index_dir = tiny_flat_index
    _write_impressions(tiny_history_model.input_files["items"], str(work / "impressions.tsv"))
    sessions_dir = str(work / "sessions")
    sessions_lib.prepare_sessions(spec.layout_dir, str(work / "impressions.tsv"), sessions_dir,
                                  log=lambda *_: None)
    ranker_dir = str(work / "ranker")
    data = ranker_train.prepare_ranker_data(sessions_dir, model_dir, index_dir, ranker_dir,
                                            log=lambda *_: None)
    config = ranker_model.RankerConfig(token_embedding_dim=8, hidden_units=(16, 8, 4),
                                       batch_size=32, learning_rate=0.1)
    ranker_train.train_ranker(data, ranker_dir, config, train_steps=30, log=lambda *_: None)
    scores = ranker_train.predict_scores(ranker_dir, data, data.eval_sessions, data.eval_features)
    path = export_servable(model_dir, index_dir, str(work / "a" / "dpsr"),
                           servable=ServableConfig(default_k=10, max_k=50, hybrid=False),
                           ranker_dir=ranker_dir, rerank_n=6)
    moved = str(work / "b")
    shutil.move(str(work / "a"), moved)
    return {"data": data, "scores": scores, "spec": spec,
            "base": os.path.join(moved, "dpsr"),
            "version_dir": os.path.join(moved, "dpsr", os.path.basename(path))}


def _padded_ids(data, table):
    ids = [line for line in open(os.path.join(data.layout_spec.layout_dir, "items", "ids.txt"),
                                 encoding="utf-8").read().split("\n")[:-1]]
    width = int(np.diff(table.splits).max())
    out = [[""] * (width + 1) for _ in range(len(table))]     # one extra "" column: padding
    for s in range(len(table)):
        for j, row in enumerate(table.candidates(s)[0]):
            out[s][j] = ids[row]
    return out


def test_rerank_signature_in_a_fresh_process_equals_the_estimator(ranker):
    data, table = ranker["data"], ranker["data"].eval_sessions
    assert len(table) >= 5
    ids = _padded_ids(data, table)
    got = run_fresh(f"""
        import json, numpy as np
        from tests.support.tf1_servable import Tf1Servable
        out = Tf1Servable({ranker['version_dir']!r}).call(
            "rerank", {{"query": {table.queries!r}, "item_ids": {ids!r}}})
        print(json.dumps({{k: np.where(np.isfinite(v), v, -1e30).tolist()
                          if v.dtype != object else [[x.decode() for x in r] for r in v]
                          for k, v in out.items()}}))
    """)
    scores = np.array(got["scores"], np.float32)
    dpsr = np.array(got["dpsr_scores"], np.float32)
    col = data.eval_features[:, list(ranker_train.features_lib.FEATURE_NAMES).index("dpsr_score")]
    for s in range(len(table)):
        lo, hi = table.splits[s], table.splits[s + 1]
        n = hi - lo
        np.testing.assert_allclose(scores[s, :n], ranker["scores"][lo:hi], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dpsr[s, :n], col[lo:hi], rtol=1e-4, atol=1e-5)
        assert (scores[s, n:] == -1e30).all()                      # padding scores -inf
        # ranked_item_ids: the candidates by descending ranker score.
        order = np.argsort(-ranker["scores"][lo:hi], kind="stable")
        assert got["ranked_item_ids"][s][:n] == [ids[s][j] for j in order]


def test_model_server_answers_a_retrieve_rerank_request(ranker):
    from dpsr_tf.demo import server_processes as process
    from tests.support.serving_testing import outputs, predict_request
    query = ranker["data"].eval_sessions.queries[0]
    with process.start_model_server(model_base_path=ranker["base"], model_name="dpsr") as server:
        stub = process.prediction_stub(server.address)
        plain = outputs(stub.Predict(predict_request("dpsr", [query], k=10), timeout=60))
        got = outputs(stub.Predict(predict_request("dpsr", [query], k=10,
                                                   signature="retrieve_rerank"), timeout=60))
        # The same items through `rerank` score the same.
        from tensorflow_serving.apis import predict_pb2
        from dpsr_tf.serving import tensors
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "dpsr"
        req.model_spec.signature_name = "rerank"
        tensors.from_ndarray(np.array([query.encode()], dtype=object), req.inputs["query"])
        tensors.from_ndarray(got["item_ids"].astype(object), req.inputs["item_ids"])
        direct = outputs(stub.Predict(req, timeout=60))
    # Re-ranked top 6 (rerank_n) of the 10 retrieved: the same items as the retrieval's first 6,
    # ordered by the ranker's score, with their retrieval positions and scores.
    assert got["item_ids"].shape == (1, 6)
    assert sorted(got["item_ids"][0].tolist()) == sorted(plain["item_ids"][0, :6].tolist())
    assert np.all(np.diff(got["scores"][0]) <= 0)
    ranks = got["retrieval_ranks"][0]
    assert sorted(ranks.tolist()) == list(range(1, 7))
    np.testing.assert_array_equal(got["item_ids"][0], plain["item_ids"][0, ranks - 1])
    np.testing.assert_allclose(got["retrieval_scores"][0], plain["scores"][0, ranks - 1])
    np.testing.assert_allclose(direct["scores"][0], got["scores"][0], rtol=1e-5, atol=1e-5)


def test_retrieved_negatives_come_from_the_top_retrieval_depth(tmp_path, tiny_history_model,
                                                                tiny_flat_index):
    """`retrieval_depth` bounds where the unshown negatives come from: with depth 3 every added
    item is one of the query's 3 best items by the DPSR score (max over heads of the dot product,
    brute force over the catalog), and none of them was shown in its session."""
    spec, model_dir = tiny_history_model.spec, tiny_history_model.model_dir
    _write_impressions(tiny_history_model.input_files["items"], str(tmp_path / "imp.tsv"))
    sessions_dir = str(tmp_path / "sessions")
    sessions_lib.prepare_sessions(spec.layout_dir, str(tmp_path / "imp.tsv"), sessions_dir,
                                  log=lambda *_: None)
    shown = sessions_lib.load_sessions(sessions_dir, "train")
    data = ranker_train.prepare_ranker_data(sessions_dir, model_dir, tiny_flat_index,
                                            str(tmp_path / "ranker"), retrieved_negatives=2,
                                            retrieval_depth=3, log=lambda *_: None)
    heads = ranker_train.query_heads(model_dir, spec, shown.queries)           # [S, m, d]
    emb = catalog_index.catalog_embeddings_by_row(
        tiny_flat_index, [line for line in open(os.path.join(
            spec.layout_dir, "items", "ids.txt"), encoding="utf-8").read().split("\n")[:-1]])
    table = data.train_sessions
    assert len(table) == len(shown)
    added_total = 0
    for s in range(len(shown)):
        scores = np.max(heads[s] @ emb.T, axis=0)
        top3 = set(np.argsort(-scores, kind="stable")[:3].tolist())
        before = set(shown.candidates(s)[0].tolist())
        items, labels = table.candidates(s)
        added = items[len(shown.candidates(s)[0]):].tolist()
        assert set(labels[len(before):].tolist()) <= {float(shown.labels.min()) - 1.0}
        assert len(added) == min(2, len(top3 - before))
        assert set(added) <= top3 - before
        added_total += len(added)
    assert added_total >= len(shown)           # most sessions have 2 unshown items in a top 3
