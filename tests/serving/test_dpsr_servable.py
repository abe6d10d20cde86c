"""The servers on the real exported DPSR servable, not the toy one.

A tiny DPSR-h model (2 heads, user profile + history) is trained, indexed in two shards
(Flat), and exported shard by shard; a `dpsr serve` process serves each shard directory as
"dpsr", and a `dpsr proxy` merges them. Checked with the real PredictionServiceStub:

* end to end: the proxy's answer equals numpy brute force over the servable's own item
  embeddings (its `item_embedding` signature) and query embeddings (`query_embedding`), with
  each head moved toward the whole catalog's first hits (dense feedback over shards: the proxy's
  two rounds), and without the move (a zero feedback_direction);
* hot swap: a new version of a shard exported under load replaces the old one with no failed
  request;
* user_history: the servable keeps the last `history_length` (4) known items of a row, as
  training did, and refuses rows wider than its cap (regression tests).
"""
import collections
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import catalog_index, index_layout
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.search.dense_feedback import DIRECTION_INPUT, SEARCH_SUFFIX, FeedbackConfig
from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors
from tests.support import waiting
from tests.support.serving_testing import outputs, rpc_error

QUERIES = ["cat3 brand5", "w17 w203", "brand1 w99 cat0", "ЖЖ 中文 nothing known"]
K = 7
FEEDBACK = FeedbackConfig(items=3, weight=0.5)
SERVABLE = ServableConfig(default_k=5, max_k=50, hybrid=False, dense_feedback=FEEDBACK)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_history_model):
    work = tmp_path_factory.mktemp("dpsr_servable")
    spec, model_dir = tiny_history_model.spec, tiny_history_model.model_dir
    index_dir = str(work / "index")
    catalog_index.index_catalog(model_dir, index_dir,
                                IndexBuildConfig(factory="Flat", num_shards=2))
    bases = []
    for shard in range(2):
        base = str(work / "models" / f"shard{shard}")
        export_servable(model_dir, index_dir, base, shard=shard,
                        servable=SERVABLE)
        bases.append(base)
    return {"spec": spec, "bases": bases, "work": work, "model_dir": model_dir,
            "index_dir": index_dir}


@pytest.fixture(scope="module")
def servers(exported):
    """One `dpsr serve` per shard directory (both serve it as "dpsr"), the proxy over them."""
    shards = process.start_all([
        process.model_server_process(base, "dpsr", name=f"dpsr_shard{i}")
        for i, base in enumerate(exported["bases"])])
    proxy = process.start_proxy({"dpsr": tuple((s.address,) for s in shards)},
                                deadline_ms=30000, shard_deadline_ms=20000)
    yield {"shards": shards, "proxy": proxy}
    proxy.stop()
    for s in shards:
        s.stop()


def _request(model, signature, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        array = np.array(value, dtype=object if isinstance(np.ravel(value)[0], str) else None)
        if array.dtype == object:
            array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
        tensors.from_ndarray(array.astype(np.int32) if alias == "k" else array,
                             request.inputs[alias])
    return request


def _item_embeddings(stub, model, spec):
    items = layout_lib.load_item_table(spec)
    feeds = {"item_title": items.titles}
    feeds.update({f"item_{n}": [items.vocabularies[n][i] for i in items.feature(n)]
                  for n in spec.item_features})
    out = outputs(stub.Predict(_request(model, "item_embedding", **feeds), timeout=60))
    return items.ids, out["embedding"]


def _top(q, item_emb, k):
    """[Q, k] item rows, their scores and best heads: an item's score is its best head's inner
    product with it (q [Q, m, d], item_emb [N, d])."""
    per_head = np.einsum("qmd,nd->qmn", q, item_emb)
    best, best_head = per_head.max(axis=1), per_head.argmax(axis=1)
    order = np.argsort(-best, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(best, order, 1), np.take_along_axis(best_head, order, 1), best


def _moved(q, item_emb, rows):
    """q's heads moved toward the unit mean of item_emb[rows] ([Q, f]), by hand."""
    mean = item_emb[rows].mean(axis=1)
    unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return q + FEEDBACK.weight * np.linalg.norm(q, axis=2, keepdims=True) * unit[:, None, :]


@pytest.mark.parametrize("rounds, signature", [("feedback", "serving_default"),
                                               ("feedback", "personalized"),
                                               ("zero_direction", "serving_default")])
def test_proxy_answer_equals_brute_force_over_the_servables_embeddings(exported, servers, rounds,
                                                                       signature):
    spec = exported["spec"]
    shard_stub = process.prediction_stub(servers["shards"][0].address)
    ids, item_emb = _item_embeddings(shard_stub, "dpsr", spec)         # [N, d], every item
    # serving_default is an unknown user with no history (the user inputs at "").
    users = {"user_gender": [""] * len(QUERIES), "user_history": [[""]] * len(QUERIES)}
    if signature == "personalized":
        users = {"user_gender": ["f", "m", "f", ""],
                 "user_history": [["item1", "item2"], ["item3", ""], ["", ""], ["item4", ""]]}
    q = outputs(shard_stub.Predict(_request("dpsr", "query_embedding", query=QUERIES,
                                            **users), timeout=60))["embedding"]  # [Q, m, d]
    proxy_stub = process.prediction_stub(servers["proxy"].address)
    if rounds == "feedback":
        # The proxy's two rounds: the heads moved toward the 3 best items of the whole catalog
        # (not of each shard: that answer differs, so the test sees which one came back).
        first, _, _, _ = _top(q, item_emb, FEEDBACK.items)
        want = _top(_moved(q, item_emb, first), item_emb, K)
        # Each shard moved toward its own first hits (no round one) would answer otherwise.
        shard = np.array([index_layout.shard_of(item, 2) for item in ids])
        local = np.full((len(QUERIES), len(ids)), -np.inf)
        for s in range(2):
            own = np.flatnonzero(shard == s)
            rows, _, _, _ = _top(q, item_emb[own], FEEDBACK.items)
            local[:, own] = _top(_moved(q, item_emb[own], rows), item_emb[own], 1)[3]
        assert (np.argsort(-local, axis=1, kind="stable")[:, :K] != want[0]).any()
        request = _request("dpsr", signature, query=QUERIES, k=K,
                           **(users if signature == "personalized" else {}))
    else:   # no move: the plain search, merged over the shards
        want = _top(q, item_emb, K)
        request = _request("dpsr", "serving_default" + SEARCH_SUFFIX, query=QUERIES, k=K)
        tensors.from_ndarray(np.zeros((len(QUERIES), q.shape[2]), np.float32),
                             request.inputs[DIRECTION_INPUT])
    order, scores, heads, best = want
    out = outputs(proxy_stub.Predict(request, timeout=60))
    assert out["partial"].tolist() is False  # both shards answered
    for row in range(len(QUERIES)):
        np.testing.assert_allclose(out["scores"][row], scores[row], atol=1e-5)
        for j, item in enumerate(out["item_ids"][row]):
            n = ids.index(item.decode())
            if n != order[row, j]:  # equal ids, except where two items tie within float error
                assert abs(best[row, n] - scores[row, j]) < 1e-5
            else:
                assert out["heads"][row][j] == heads[row, j]


def test_a_non_finite_feedback_direction_is_refused_and_the_shard_serves_on(exported, servers):
    stub = process.prediction_stub(servers["shards"][0].address)
    request = _request("dpsr", "serving_default" + SEARCH_SUFFIX, query=QUERIES, k=K)
    dim = load_model_config(exported["model_dir"])[0].embedding_dim
    direction = np.zeros((len(QUERIES), dim), np.float32)
    direction[2, 3] = np.nan
    tensors.from_ndarray(direction, request.inputs[DIRECTION_INPUT])
    error = rpc_error(stub.Predict, request, timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'feedback_direction' holds a non-finite value at [2, 3]" in error.details()
    out = outputs(stub.Predict(_request("dpsr", "serving_default", query=QUERIES, k=K),
                               timeout=60))
    assert out["item_ids"].shape == (len(QUERIES), K)


def _personalized(history, gender="f"):
    rows = len(QUERIES)
    return _request("dpsr", "personalized", query=QUERIES, k=K,
                    user_gender=[gender] * rows, user_history=[history] * rows)


def test_user_history_keeps_the_last_history_length_items(exported, servers):
    # Regression: the servable used the whole history a client sent, while
    # training used only the last history_length (4) items of a user.
    assert exported["spec"].history_length == 4
    stub = process.prediction_stub(servers["shards"][0].address)
    long = ["item1", "item2", "item3", "item4", "item5", "item6"]
    scores = lambda h: outputs(stub.Predict(_personalized(h), timeout=60))["scores"]  # noqa
    full = scores(long)
    np.testing.assert_allclose(full, scores(long[-4:]), atol=1e-6)
    # Padding and unknown ids are not items: the last 4 *known* items count.
    np.testing.assert_allclose(full, scores(["item1", "item2", "item3", "", "item4", "item5",
                                             "not-an-item", "item6", ""]), atol=1e-6)
    assert not np.allclose(full, scores(long[:4]), atol=1e-4)  # the oldest items are dropped


def test_user_history_width_is_capped(servers):
    stub = process.prediction_stub(servers["shards"][0].address)
    error = rpc_error(stub.Predict, _personalized(["item1"] + [""] * 1024), timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_history must have at most 1024 items per row" in error.details()
    out = outputs(stub.Predict(_personalized(["item1"] + [""] * 1023), timeout=60))
    assert out["item_ids"].shape == (len(QUERIES), K)


@pytest.mark.parametrize("signature, alias, value, sent, expected", [
    ("serving_default", "k", [K], [1], "DT_INT32 []; send a scalar (a tensor with no dims)"),
    ("serving_default", "k", [[K, K]], [1, 2],
     "DT_INT32 []; send a scalar (a tensor with no dims)"),
    ("serving_default", "query", [QUERIES], [1, 4], "DT_STRING [?]; send a tensor of rank 1"),
    ("personalized", "user_history", ["item1"] * len(QUERIES), [4],
     "DT_STRING [?,?]; send a tensor of rank 2"),
    ("personalized", "user_history", [[["item1"]]] * len(QUERIES), [4, 1, 1],
     "DT_STRING [?,?]; send a tensor of rank 2"),
])
def test_inputs_of_the_wrong_shape_are_named_with_both_shapes(servers, signature, alias, value,
                                                              sent, expected):
    """A non-scalar k, a wrong-rank query or user_history: INVALID_ARGUMENT naming the input
    alias, the shape sent and the shape the signature declares (before: a graph node's
    message), and the server answers the next request."""
    stub = process.prediction_stub(servers["shards"][0].address)
    inputs = {"query": QUERIES, "k": K}
    if signature == "personalized":
        inputs.update(user_gender=["f"] * len(QUERIES), user_history=[["item1"]] * len(QUERIES))
    inputs[alias] = value
    error = rpc_error(stub.Predict, _request("dpsr", signature, **inputs), timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (f"input '{alias}' has shape {sent} but signature '{signature}' "
                               f"expects {expected}"), error.details()
    out = outputs(stub.Predict(_request("dpsr", "serving_default", query=QUERIES, k=K),
                               timeout=60))
    assert out["item_ids"].shape == (len(QUERIES), K)


def _state(address, version):
    """The version's state on the server at `address`, None when it is not listed."""
    channel = grpc.insecure_channel(address)
    try:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "dpsr"
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=60).model_version_status
        return next((s.state for s in statuses if s.version == version), None)
    finally:
        channel.close()


def test_hot_swap_under_load(exported, servers):
    """A new version exported into a serving shard's base path (as `dpsr export` does) takes
    over while two clients send requests; the old version's directory is then deleted. No
    request fails, and both versions answered the same (same model, same index)."""
    base = exported["bases"][0]
    (old_version,) = [int(v) for v in os.listdir(base) if v.isdigit()]
    stub = process.prediction_stub(servers["shards"][0].address)
    request = _request("dpsr", "serving_default", query=QUERIES[:2], k=K)
    answers, errors = collections.defaultdict(list), []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                answers[response.model_spec.version.value].append(
                    outputs(response)["item_ids"].tolist())
            except grpc.RpcError as e:
                errors.append((e.code(), e.details()))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        new_path = export_servable(exported["model_dir"], exported["index_dir"], base, shard=0,
                                   servable=SERVABLE)
        new_version = int(os.path.basename(new_path))
        waiting.wait_until(lambda: answers[new_version] or errors, "the new version serving",
                           poll_s=0.2)
        assert answers[new_version], "the new version never served"
        shutil.rmtree(os.path.join(base, str(old_version)))
        # The old version unloads while requests keep coming; then more answers arrive.
        waiting.wait_until(lambda: _state(servers["shards"][0].address, old_version) in
                           (None, get_model_status_pb2.ModelVersionStatus.END),
                           "the old version's unload", poll_s=0.2)
        count = len(answers[new_version])
        waiting.wait_until(lambda: len(answers[new_version]) > count + 5 or errors,
                           "answers after the unload", poll_s=0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert new_version > old_version and answers[old_version]
    assert len(answers[new_version]) > count  # still serving after the old one went away
    assert {str(a) for v in (old_version, new_version) for a in answers[v]} == \
        {str(answers[old_version][0])}
