"""Through the proxy, one client's flood cannot get another client's calls refused: the proxy
shares its backend capacity by client connection, and tells the model server whose call each
backend call is, so the server's per-client queues hold the flood, not the others. A real
`dpsr serve` and `dpsr proxy`, the real gRPC client on a connection per client; every
assertion is a count of statuses or an order of grants, none depends on the machine's speed."""
import asyncio

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.proxy.peer_limits import BackendGate
from tests.support import waiting
from tests.support.load import PredictLoad, predict_once
from tests.support.serving_testing import predict_request

SERVER_QUEUE_PER_CLIENT = 8  # the model server's --max_queued_requests_per_client
PROXY_CALLS_PER_PEER = 24  # the proxy's --max_concurrent_calls_per_peer: above the server's
FLOOD_THREADS = 32  # calls the flooding client keeps in flight
NORMAL_CALLS = 40


@pytest.fixture(scope="module")
def servers(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("proxy_fairness")
    server = process.start_model_server(
        toy_model_dir, model_name="dpsr", log_dir=str(work),
        # The Python servers' own per-client queues and the proxy's backend shares, which a
        # native front end would keep the flood from reaching (test_native_front_end.py).
        flags=["--front_end=python", "--num_run_threads=1",
               f"--max_queued_requests_per_client={SERVER_QUEUE_PER_CLIENT}"])
    proxy = process.start_proxy({"dpsr": ((server.address,),)}, log_dir=str(work),
                                flags=["--front_end=python",
                                       f"--max_concurrent_calls_per_peer={PROXY_CALLS_PER_PEER}"],
                                deadline_ms=60_000)
    yield server, proxy
    assert proxy.stop() == 0, proxy.log_tail()
    assert server.stop() == 0, server.log_tail()


def _stub(address):
    """A stub on a connection of its own (clients are told apart by connection)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_a_flood_through_the_proxy_does_not_get_another_clients_calls_refused(servers):
    # Before: the server saw both clients on the proxy's one connection; the flood kept that
    # client's queue full and the normal client's calls were refused RESOURCE_EXHAUSTED. Now
    # the server queues each proxy client apart: only the flood is refused.
    _, proxy = servers
    flood_request = predict_request("dpsr", [f"flood {i}" for i in range(64)], k=100)
    normal_stub = _stub(proxy.address)
    normal_stub.Predict(predict_request("dpsr", ["warm"]), timeout=60)
    with PredictLoad(_stub(proxy.address), flood_request, threads=FLOOD_THREADS,
                     timeout_s=60) as flood:
        waiting.wait_until(lambda: flood.count("RESOURCE_EXHAUSTED") >= 20,
                           "the flood fills its queues", progress=flood.__len__)
        calls = [predict_once(normal_stub, predict_request("dpsr", [f"normal {i}"]), 60)
                 for i in range(NORMAL_CALLS)]
        codes = [c.code if c.code == "OK" else f"{c.code}: {c.details}" for c in calls]
        flood_codes = flood.codes()
    assert codes == ["OK"] * NORMAL_CALLS
    assert flood_codes["OK"] > 0
    assert set(flood_codes) <= {"OK", "RESOURCE_EXHAUSTED"}, flood_codes


async def _settle():
    """Lets every ready task of the loop run (no wall clock: the loop's own turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _call(gate, order, peer, n):
    """Call n of `peer`: takes a slot of `gate`, then notes (peer, n) in `order`."""
    await gate.acquire(peer, None)
    order.append((peer, n))


def test_backend_slots_go_to_the_peer_with_the_fewest_calls_running():
    async def scenario():
        gate = BackendGate(2, max_per_peer=2)  # one peer may hold every slot here
        await gate.acquire("flood", None)
        await gate.acquire("flood", None)
        order = []
        waiters = [asyncio.ensure_future(_call(gate, order, "flood", n)) for n in range(5)]
        await _settle()
        waiters.append(asyncio.ensure_future(_call(gate, order, "normal", 0)))
        await _settle()
        assert gate.waiting == 6 and order == []
        gate.release("flood")  # the normal peer has none running: it goes first
        await _settle()
        assert order == [("normal", 0)]
        gate.release("flood")
        await _settle()
        assert order == [("normal", 0), ("flood", 0)]
        # A call that waits past its timeout gets DEADLINE_EXCEEDED and holds no slot.
        with pytest.raises(ServingError) as e:
            await gate.acquire("late", 0.01)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # A cancelled waiter leaves the line; the others still get their turns in order.
        waiters[1].cancel()
        await _settle()
        for _ in range(3):
            gate.release("flood")
            await _settle()
        assert order == [("normal", 0), ("flood", 0), ("flood", 2), ("flood", 3),
                         ("flood", 4)]
        assert gate.waiting == 0 and gate.running("flood") == 1
        gate.release("flood")
        assert gate.running("flood") == 0 and gate.running("normal") == 1

    asyncio.run(scenario())


def test_one_peer_holds_at_most_its_share_so_another_finds_a_slot_free():
    # Before: a flood held all the slots, and another client's call waited for the flood's
    # next answer (through the proxy, normal p50 179 ms beside a 2,000-call flood).
    async def scenario():
        gate = BackendGate(4)  # share: 2
        assert gate.max_per_peer == 2
        order = []
        flood = [asyncio.ensure_future(_call(gate, order, "flood", n)) for n in range(5)]
        await _settle()
        assert order == [("flood", 0), ("flood", 1)] and gate.waiting == 3
        # Two slots stay free: two calls of other peers start at once, without a release.
        await gate.acquire("normal", None)
        await gate.acquire("other", None)
        assert gate.running("normal") == 1 and gate.running("other") == 1
        # The gate is full; a freed slot of another peer goes to nobody at its share...
        gate.release("other")
        await _settle()
        assert order == [("flood", 0), ("flood", 1)] and gate.waiting == 3
        # ...and the flood's own release lets its next call in, in its order.
        gate.release("flood")
        await _settle()
        assert order == [("flood", 0), ("flood", 1), ("flood", 2)]
        assert gate.running("flood") == 2 and gate.waiting == 2
        for _ in range(4):
            gate.release("flood")
            await _settle()
        assert order[-2:] == [("flood", 3), ("flood", 4)] and gate.waiting == 0
        for task in flood:
            assert task.done()

    asyncio.run(scenario())


def test_backend_gate_settings_are_checked():
    assert BackendGate(5).max_per_peer == 3 and BackendGate(1).max_per_peer == 1
    assert BackendGate(0).max_in_flight == 0  # no limit at all
    for bad in (0, 6):
        with pytest.raises(ValueError, match=f"max_per_peer is {bad}"):
            BackendGate(5, max_per_peer=bad)


def test_proxy_refuses_a_backend_share_over_the_total(tmp_path):
    proxy = process.proxy_process({"dpsr": (("127.0.0.1:1",),)}, log_dir=str(tmp_path),
                                  flags=["--max_backend_calls_per_peer=200"])
    with pytest.raises(RuntimeError, match="--max_backend_calls_per_peer is 200; it must be at "
                                           r"most --max_backend_calls_in_flight \(128\)"):
        proxy.start()
