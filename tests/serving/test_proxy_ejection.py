"""A hung replica that is its shard's only one, behind an in-process proxy with scripted
backends: after its timeouts eject it, no call waits on it (the shard fails at once and the
answer is partial, or UNAVAILABLE under partial_policy FAIL); each ejection lets exactly one
trial call through, and a good trial readmits it. Calls reaching the hung backend are counted;
the ejection's end is set by the test instead of waited for."""
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from dpsr_tf.serving import tensors
from dpsr_tf.serving.proxy import config as proxy_config
from tests.support.fake_backends import FakeBackend, InProcessProxy
from tests.support.serving_testing import outputs, predict_request, rpc_error

K = 4
SHARD_DEADLINE_MS = 1000  # what each call to the hung replica costs while it is in rotation


def _answer(shard: int) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "dpsr"
    response.model_spec.version.value = 1
    ids = np.array([[f"s{shard}-{j}".encode() for j in range(K)]], dtype=object)
    scores = np.array([[0.9 - 0.1 * j - 0.01 * shard for j in range(K)]], dtype=np.float32)
    tensors.from_ndarray(ids, response.outputs["item_ids"])
    tensors.from_ndarray(scores, response.outputs["scores"])
    return response


def _signatures() -> get_model_metadata_pb2.SignatureDefMap:
    """serving_default as a DPSR shard has it, so the proxy learns once that it merges."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig = sig_map.signature_def["serving_default"]
    for alias in ("query", "k"):
        sig.inputs[alias].name = f"{alias}:0"
    for alias in ("item_ids", "scores"):
        sig.outputs[alias].name = f"{alias}:0"
    return sig_map


class _Hangable:
    """A backend answer that blocks while `hung` is set (at most 30 s, so threads end)."""

    def __init__(self, shard: int):
        self.shard = shard
        self.hung = threading.Event()
        self.healed = threading.Event()

    def __call__(self, request):
        if self.hung.is_set():
            self.healed.wait(30)
        return _answer(self.shard)


@pytest.fixture
def cluster():
    answers = [_Hangable(0), _Hangable(1)]
    backends = [FakeBackend(a, _signatures()) for a in answers]
    shards = ((backends[0].address,), (backends[1].address,))
    text = proxy_config.proxy_config_text({"dpsr": shards}, deadline_ms=20000,
                                          shard_deadline_ms=SHARD_DEADLINE_MS)
    text += proxy_config.proxy_config_text({"strict": shards}, backend_model_name="dpsr",
                                           deadline_ms=20000, partial_policy="FAIL",
                                           shard_deadline_ms=SHARD_DEADLINE_MS)
    # Ejections far longer than the test: they end only when the test says so.
    text += ("replica_retry_backoff_ms: 600000\noutlier_max_ejection_ms: 600000\n"
             "outlier_consecutive_failures: 2\n")
    server = InProcessProxy(text)
    replica = server.server.servicer.router.routes["dpsr"].shards[0][0]
    yield server, answers[0], backends[0], replica
    answers[0].healed.set()
    server.close()
    for b in backends:
        b.stop()


def _ask(server, model="dpsr"):
    """(item ids, partial) of one call."""
    got = outputs(server.stub.Predict(predict_request(model, ["q"], k=K), timeout=60))
    return list(got["item_ids"][0]), bool(got["partial"])


def _end_ejection(replica):
    replica.ejected_until = time.monotonic()  # the trial is due now


def test_a_hung_only_replica_is_ejected_then_probed_back(cluster):
    server, hang, backend, replica = cluster
    full, partial = _ask(server)
    assert not partial and len(full) == K and backend.calls == 1
    hang.hung.set()
    for _ in range(2):  # two timeouts in a row: each waits the shard deadline, then ejection
        ids, partial = _ask(server)
        assert partial and all(i.startswith(b"s1-") for i in ids)
    assert replica.ejected and backend.calls == 3

    # Ejected: 20 calls are answered without shard 0, none of them sent to it.
    for _ in range(20):
        ids, partial = _ask(server)
        assert partial and all(i.startswith(b"s1-") for i in ids)
    error = rpc_error(server.stub.Predict, predict_request("strict", ["q"], k=K), timeout=60)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "ejected" in error.details()
    assert backend.calls == 3

    # The ejection ends while it still hangs: one trial call, which times out and ejects it
    # again; nothing else reaches it.
    _end_ejection(replica)
    for _ in range(6):
        _, partial = _ask(server)
        assert partial
    assert backend.calls == 4 and replica.ejected and replica.ejections == 2

    # It recovers: the next trial answers, the replica is back, and it gets every call again.
    hang.hung.clear()
    hang.healed.set()
    _end_ejection(replica)
    ids, partial = _ask(server)
    assert not partial and ids == full and backend.calls == 5
    assert not replica.ejected
    for _ in range(5):
        ids, partial = _ask(server)
        assert not partial and ids == full
    assert backend.calls == 10


def test_a_metadata_answer_does_not_readmit_a_hung_replica(cluster):
    """A replica whose Predict hangs still answers GetModelMetadata (the proxy's own signature
    lookups ask it). When such an answer is its trial, the replica stays ejected, and the next
    Predict is the one trial that waits on it (before: the metadata answer readmitted it, so
    two Predicts in a row waited the shard deadline before it was ejected again)."""
    server, hang, backend, replica = cluster
    _ask(server)
    hang.hung.set()
    for _ in range(2):
        _ask(server)
    assert replica.ejected and replica.ejections == 1 and backend.calls == 3

    _end_ejection(replica)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "dpsr"
    server.stub.GetModelMetadata(request, timeout=60)  # answered by the hung replica
    assert replica.ejected and replica.ejections == 1 and not replica.trial_in_flight

    for _ in range(4):
        _, partial = _ask(server)
        assert partial
    assert backend.calls == 4  # one Predict trial, not two Predicts in rotation
    assert replica.ejected and replica.ejections == 2
