"""The proxy's replica health rule (outlier ejection, dpsr_tf/serving/proxy/routing.py) and hedge
delay (proxy_config.HedgePolicy), step by step against the documented rule."""
import asyncio

import pytest

from dpsr_tf.serving.proxy import config as proxy_config, routing

POLICY = proxy_config.OutlierPolicy(consecutive_failures=3, base_ejection_s=1.0,
                                    max_ejection_s=5.0)


def _replicas(n=2):
    """Replicas (their channels are never used here) made on a loop, as the proxy does."""
    events = []

    async def make():
        return [routing.Replica(f"127.0.0.1:{9000 + i}",
                                listener=lambda r, ejected: events.append((r.address, ejected)))
                for i in range(n)]

    return asyncio.run(make()), events


def test_consecutive_failures_eject_and_the_ejection_doubles_up_to_the_cap(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    (replica, _), events = _replicas()
    replica.record_failure(POLICY)
    replica.record_success()  # a good answer resets the count
    replica.record_failure(POLICY)
    replica.record_failure(POLICY)
    assert not replica.ejected and replica.in_rotation("m", now[0])
    replica.record_failure(POLICY)  # the third in a row
    assert replica.ejected and replica.ejected_until == 101.0
    assert not replica.in_rotation("m", now[0])
    lengths = []
    for _ in range(4):  # each failed trial ejects again, twice as long, at most 5 s
        now[0] = replica.ejected_until
        assert replica.in_rotation("m", now[0])  # the trial is due
        replica.begin_call()
        assert not replica.in_rotation("m", now[0])  # one trial at a time
        replica.record_failure(POLICY)
        lengths.append(replica.ejected_until - now[0])
    assert lengths == [2.0, 4.0, 5.0, 5.0]
    now[0] = replica.ejected_until
    replica.begin_call()
    replica.record_success()  # the trial answers: back in rotation, the doubling forgotten
    assert not replica.ejected and replica.in_rotation("m", now[0])
    replica.record_failure(POLICY, immediate=True)  # UNAVAILABLE ejects at once, 1 s again
    assert replica.ejected_until - now[0] == 1.0
    assert events == [("127.0.0.1:9000", True)] * 5 + [("127.0.0.1:9000", False),
                                                        ("127.0.0.1:9000", True)]


def test_pick_never_waits_on_a_hung_replica(monkeypatch):
    now = [50.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    (a, b), _ = _replicas()
    spec = proxy_config.parse_proxy_settings(proxy_config.proxy_config_text(
        {"m": ((a.address, b.address),)})).routes["m"]
    route = routing.Route(spec, {a.address: a, b.address: b})
    for _ in range(3):  # timeouts: ejected as hung
        a.record_failure(POLICY)
    assert a.ejected and a.hung
    assert {route.pick(0, set()) for _ in range(6)} == {b}
    assert route.pick(0, {b}, in_rotation_only=True) is None  # never hedge to an ejected one
    assert route.pick(0, {b}) is None  # nor fail over to a hung one
    assert route.hung_left(0, {b}) == [a]
    for _ in range(3):
        b.record_failure(POLICY)
    b.ejected_until = a.ejected_until + 1
    assert route.pick(0, set()) is None  # all hung: the shard fails at once
    assert route.hung_left(0, set()) == [a, b]  # the trial due first first
    now[0] = a.ejected_until
    assert route.pick(0, set()) is a  # a's trial is due
    a.begin_call()
    assert route.pick(0, set()) is None  # one trial at a time
    a.record_success()
    assert not a.hung and route.pick(0, set()) is a


def test_a_replica_that_refused_is_still_the_last_resort(monkeypatch):
    """UNAVAILABLE ejects, but costs no wait: when nothing else is left it is tried (the one
    whose ejection ends first), so a restarted single replica serves at its first call."""
    monkeypatch.setattr(routing.time, "monotonic", lambda: 50.0)
    (a, b), _ = _replicas()
    spec = proxy_config.parse_proxy_settings(proxy_config.proxy_config_text(
        {"m": ((a.address, b.address),)})).routes["m"]
    route = routing.Route(spec, {a.address: a, b.address: b})
    a.record_failure(POLICY, immediate=True)
    assert a.ejected and not a.hung
    assert {route.pick(0, set()) for _ in range(6)} == {b}
    assert route.pick(0, {b}, in_rotation_only=True) is None
    assert route.pick(0, {b}) is a  # fail over to it when nothing else is left
    b.record_failure(POLICY, immediate=True)
    b.ejected_until = a.ejected_until + 1
    assert route.pick(0, set()) is a and route.hung_left(0, set()) == []


@pytest.mark.parametrize("remaining, p95, want", [
    (8.0, None, 2.0),      # no history yet: the budget fraction of the time left
    (8.0, 0.004, 0.01),    # 2 x p95 = 8 ms, below the 10 ms floor
    (8.0, 0.030, 0.06),    # 2 x p95
    (0.1, 0.030, 0.025),   # capped by the fraction of little time left
])
def test_hedge_delay(remaining, p95, want):
    policy = proxy_config.HedgePolicy(enabled=True, budget_fraction=0.25, min_delay_s=0.01)
    assert policy.delay(remaining, p95) == pytest.approx(want)


def test_calls_in_flight_at_the_ejection_do_not_lengthen_it(monkeypatch):
    """The calls sent before a replica hung time out after it is ejected: each is no new
    verdict, so the ejection stays the first one (1 s), and the trial's failure is the second
    (2 s), as in the doubling rule above."""
    now = [10.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    (replica, _), events = _replicas()
    in_flight_sent_at = [9.0 + 0.01 * i for i in range(19)]
    for started in in_flight_sent_at[:3]:
        replica.record_failure(POLICY, started=started)  # the third in a row ejects
    assert replica.ejected and replica.ejections == 1 and replica.ejected_until == 11.0
    now[0] = 10.5
    for started in in_flight_sent_at[3:]:  # the rest time out while it is ejected
        replica.record_failure(POLICY, started=started)
    assert replica.ejections == 1 and replica.ejected_until == 11.0
    assert not replica.in_rotation("m", now[0])
    now[0] = 11.0
    replica.begin_call()  # the trial, sent after the ejection began
    replica.record_failure(POLICY, started=11.0)
    assert replica.ejections == 2 and replica.ejected_until == 13.0
    assert events == [("127.0.0.1:9000", True)] * 2


def test_a_timeout_of_a_call_sent_before_a_good_answer_is_no_failure(monkeypatch):
    """One client's heavy calls with short deadlines time out while the replica answers
    others: none of them counts, so they cannot eject it for everyone; a replica that answers
    nothing after the calls were sent (hung) is ejected as before, and UNAVAILABLE still
    ejects at once."""
    now = [20.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    (replica, _), events = _replicas()
    heavy_sent_at = [19.9 + 0.001 * i for i in range(50)]
    replica.record_success()  # a normal call answered at 20.0, after all of them were sent
    now[0] = 20.05
    for started in heavy_sent_at:
        replica.record_failure(POLICY, started=started)
    assert not replica.ejected and replica.consecutive_failures == 0
    replica.record_success(runs_model=False)  # a metadata answer is no sign the runs work
    for started in (20.01, 20.02):  # sent after the last good answer: they count
        replica.record_failure(POLICY, started=started)
    assert not replica.ejected and replica.consecutive_failures == 2
    replica.record_failure(POLICY, started=20.03)  # the third in a row
    assert replica.ejected and replica.ejected_until == 21.05
    now[0] = 21.05
    replica.begin_call()
    replica.record_success()  # the trial answers
    replica.record_failure(POLICY, immediate=True, started=20.0)  # UNAVAILABLE: at once
    assert replica.ejected
    assert events == [("127.0.0.1:9000", True), ("127.0.0.1:9000", False),
                      ("127.0.0.1:9000", True)]


def test_a_timeout_cut_short_by_its_client_is_judged_at_the_proxys_own_deadline(monkeypatch):
    """Heavy calls with 50 ms client deadlines saturate the replica, so no other answer comes
    within their 50 ms: they are judged when the proxy's own deadline (here 1 s) has passed
    since they were sent. A good answer before then clears them; without one they count, in
    order, and eject as any timeouts would."""
    now = [30.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    (replica, _), events = _replicas()
    for i in range(5):  # sent at 30.00-30.04, each timed out 50 ms later
        now[0] = 30.05 + 0.01 * i
        replica.record_failure(POLICY, started=30.0 + 0.01 * i, verdict_at=31.0 + 0.01 * i)
    assert replica.consecutive_failures == 0 and replica.in_rotation("m", now[0])
    now[0] = 30.2
    replica.record_success()  # a normal call answered late, still before the verdicts
    now[0] = 31.1
    assert replica.in_rotation("m", now[0]) and replica.consecutive_failures == 0
    for i in range(3):  # the same with no good answer by the verdict: they count
        now[0] = 32.05 + 0.01 * i
        replica.record_failure(POLICY, started=32.0 + 0.01 * i, verdict_at=33.0 + 0.01 * i)
    now[0] = 33.005
    assert replica.in_rotation("m", now[0]) and replica.consecutive_failures == 1
    now[0] = 33.02
    assert not replica.in_rotation("m", now[0])  # the third in a row ejects
    assert replica.ejected and replica.hung and replica.ejected_until == 34.02
    replica.record_failure(POLICY, started=33.0)  # a call of the proxy's own time: at once
    assert replica.ejections == 1  # sent before the ejection: nothing new
    assert events == [("127.0.0.1:9000", True)]
