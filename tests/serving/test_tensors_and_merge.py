"""TensorProto conversion (against tf.make_ndarray / tf.make_tensor_proto) and the shard merge
(against a brute-force top-K over the union of every shard's items)."""
import grpc
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.serving.proxy import merge
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError


@pytest.mark.parametrize("array", [
    np.array([b"apple", "苹果".encode(), b""], dtype=object),
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.array([[1, -2], [3, 4]], dtype=np.int32),
    np.array([2 ** 40, -5], dtype=np.int64),
    np.array(7, dtype=np.int32),
    np.array([True, False]),
    np.zeros((2, 0), dtype=np.float32),
])
def test_tensor_round_trip_matches_tensorflow(array):
    proto = tensors.from_ndarray(array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(tensors.to_ndarray(proto), array)
    tf_proto = tf.make_tensor_proto(array)  # tensor_content encoding
    np.testing.assert_array_equal(tensors.to_ndarray(tf_proto), array)


def test_bad_tensor_protos_are_invalid_argument():
    proto = tf.make_tensor_proto(np.arange(4, dtype=np.float32))
    proto.tensor_content = proto.tensor_content[:-2]
    with pytest.raises(ServingError) as e:
        tensors.to_ndarray(proto, "input 'x'")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "input 'x'" in e.value.message
    strings = tensors.from_ndarray(np.array([b"a", b"b"], dtype=object))
    strings.tensor_shape.dim[0].size = 3
    with pytest.raises(ServingError, match="needs 3 strings"):
        tensors.to_ndarray(strings)


def _shard_answer(rng, ids, scores, k):
    """A shard's exact top-k over its items for each row."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    heads = rng.integers(0, 3, order.shape).astype(np.int32)
    return {"item_ids": ids[order], "scores": np.take_along_axis(scores, order, 1),
            "heads": heads}


@pytest.mark.parametrize("num_shards, k, batch", [(2, 5, 1), (3, 20, 4), (4, 50, 2),
                                                  (2, 200, 3)])
def test_merge_equals_global_top_k(num_shards, k, batch):
    rng = np.random.default_rng(num_shards * 100 + k)
    n = 120
    all_ids = np.array([f"item-{i}".encode() for i in range(n)], dtype=object)
    all_scores = rng.standard_normal((batch, n)).astype(np.float32)
    parts = [np.arange(s, n, num_shards) for s in range(num_shards)]
    answers = [_shard_answer(rng, all_ids[p], all_scores[:, p], k) for p in parts]
    merged = merge.merge_topk(answers, k)
    want = np.argsort(-all_scores, axis=1, kind="stable")[:, :min(k, n)]
    np.testing.assert_array_equal(merged["item_ids"], all_ids[want])
    np.testing.assert_allclose(merged["scores"], np.take_along_axis(all_scores, want, 1))
    # heads follow their items
    for b in range(batch):
        head_of = {}
        for a in answers:
            head_of.update(zip(a["item_ids"][b].tolist(), a["heads"][b].tolist()))
        assert merged["heads"][b].tolist() == [head_of[i] for i in merged["item_ids"][b]]


def test_merge_dedupes_pads_and_defaults_k():
    a = {"item_ids": np.array([[b"x", b"y", b""]], dtype=object),
         "scores": np.array([[0.9, 0.5, -np.inf]], np.float32),
         "heads": np.array([[0, 1, -1]], np.int32), "extra": np.array(3)}
    b = {"item_ids": np.array([[b"x", b"z", b""]], dtype=object),
         "scores": np.array([[0.95, 0.1, -np.inf]], np.float32),
         "heads": np.array([[2, 2, -1]], np.int32), "extra": np.array(4)}
    merged = merge.merge_topk([a, b], k=None)  # k: the widest shard answer (3)
    assert merged["item_ids"].tolist() == [[b"x", b"y", b"z"]]
    np.testing.assert_allclose(merged["scores"], [[0.95, 0.5, 0.1]])
    assert merged["heads"].tolist() == [[2, 1, 2]]  # x keeps its best head
    assert int(merged["extra"]) == 3  # non-aligned outputs come from the first shard
    merged = merge.merge_topk([a, b], k=5)  # fewer unique items than k: width 3
    assert merged["item_ids"].shape == (1, 3)
    two_rows = {k: np.concatenate([v, v[:, ::-1]]) for k, v in a.items() if k != "extra"}
    two_rows["item_ids"][1] = [b"", b"", b"q"]
    merged = merge.merge_topk([two_rows], k=2)
    assert merged["item_ids"].tolist() == [[b"x", b"y"], [b"q", b""]]  # padded row
    assert merged["heads"][1, 1] == -1 and merged["scores"][1, 1] == -np.inf


def test_merge_rejects_misaligned_shards():
    a = {"item_ids": np.array([[b"x"]], dtype=object), "scores": np.array([[1.0]], np.float32)}
    b = {"item_ids": np.array([[b"x"], [b"y"]], dtype=object),
         "scores": np.array([[1.0], [2.0]], np.float32)}
    with pytest.raises(ServingError) as e:
        merge.merge_topk([a, b], 1)
    assert e.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(ServingError, match="lack the merge output 'scores'"):
        merge.merge_topk([{"item_ids": a["item_ids"]}], 1)


def test_an_encoder_list_answer_keeps_its_own_ranking_and_is_never_one_shard_of_several():
    """Re-fusing by dense and lexical scores would drop the encoder's part (x found by the
    encoder alone has -inf in both): the one answer keeps its order; two are refused."""
    answer = {"item_ids": np.array([[b"x", b"y", b"z"]], dtype=object),
              "scores": np.array([[0.5, 0.4, 0.3]], np.float32),
              "dense_scores": np.array([[-np.inf, 0.9, 0.1]], np.float32),
              "lexical_scores": np.array([[-np.inf, -np.inf, 7.0]], np.float32),
              "encoder_scores": np.array([[0.8, -np.inf, 0.7]], np.float32),
              "fusion_rule": np.array([b'{"rule": "rrf"}'], dtype=object)}
    merged = merge.merge_topk([answer], k=3)
    assert merged["item_ids"].tolist() == [[b"x", b"y", b"z"]]
    np.testing.assert_allclose(merged["scores"], answer["scores"])
    plain = {k: v for k, v in answer.items() if k != "encoder_scores"}
    assert merge.merge_topk([plain], k=3)["item_ids"].tolist()[0][-1] == b"x"   # re-fused
    with pytest.raises(ServingError, match="cannot be one shard of several") as e:
        merge.merge_topk([answer, answer], k=3)
    assert e.value.code == grpc.StatusCode.INTERNAL
