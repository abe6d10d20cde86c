"""QueueDelay (serving/queue_delay.py): the standing-queue and expected-wait rules, on a fake
clock, against hand-worked sequences (the same as front_end_cc/fair_gate_test.cc's, in
seconds; the checks stay clear of exact interval ends, which float sums blur)."""
import pytest

from dpsr_tf.serving.queue_delay import QueueDelay


def test_a_queue_above_the_target_for_a_whole_interval_stands_until_it_is_below_again():
    delay = QueueDelay(target=0.010, interval=0.100)
    # (oldest waiting call's arrival or None, now, standing?)
    steps = [(None, 0.000, False),
             (0.000, 0.005, False),   # waited 5 ms < 10
             (0.000, 0.020, False),   # 20 >= 10: the interval starts, ends at 120
             (0.000, 0.119, False),
             (0.000, 0.121, True),
             (0.005, 0.130, True),    # another oldest call, still above: the same interval
             (0.119, 0.133, True),    # 14 ms
             (None, 0.135, False),    # nothing waits: below again
             (0.135, 0.140, False),
             # 11 ms, and refused 13 ms ago (within 16 intervals): at once, no new interval
             (0.135, 0.146, True),
             (None, 2.000, False),
             (2.000, 2.005, False),
             # refused last at 146 ms, over 16 intervals ago: a new interval, ends at 2.111
             (2.000, 2.011, False),
             (2.000, 2.110, False),
             (2.000, 2.112, True)]
    assert [delay.standing("a", since, now) for since, now, _ in steps] == [
        s for _, _, s in steps]
    # Clients are apart: another client's queue is judged on its own.
    assert not delay.standing("b", 0.0, 2.112)


def test_the_last_refusal_is_remembered_when_the_queue_empties():
    """The run queue forgets a client whose queue emptied; past capacity its queue empties
    between refusals, and a new interval of grace each time would admit a whole interval of
    calls that then wait several intervals to run."""
    delay = QueueDelay(target=0.010, interval=0.100)
    assert not delay.standing("a", 0.0, 0.020)
    assert delay.standing("a", 0.0, 0.121)
    delay.forget("a")
    assert delay.standing("a", 0.200, 0.211)  # 11 ms, refused 90 ms ago
    delay.forget("a")
    assert not delay.standing("a", 2.000, 2.011)  # refused last 1.8 s (18 intervals) ago


def test_remembered_refusals_are_pruned_once_past_the_memory():
    """Many clients refused once (a flood of connections) are not kept for ever: once more
    than 4,096 are remembered, those refused over 16 intervals ago are dropped."""
    delay = QueueDelay(target=0.010, interval=0.100)
    for i in range(4096):  # each client: standing from 0.02, refused at 0.121
        assert not delay.standing(i, 0.0, 0.020)
        assert delay.standing(i, 0.0, 0.121)
    assert delay.remembered == 4096
    assert not delay.standing("late", 10.0, 10.020)
    assert delay.standing("late", 10.0, 10.121)  # the 4,097th: the old ones are pruned
    assert delay.remembered == 1
    delay.forget(0)
    assert not delay.standing(0, 10.2, 10.211)  # client 0's refusal was forgotten


def test_without_a_target_nothing_stands():
    delay = QueueDelay(target=0.0, interval=0.1)
    assert not any(delay.standing("a", 0.0, t) for t in (1.0, 2.0, 100.0))


def test_the_measured_service_time_raises_the_target():
    delay = QueueDelay(target=0.010, interval=0.100)
    assert delay.service_time == 0 and delay.target == 0.010
    delay.observe_service(0.050)
    assert delay.service_time == pytest.approx(0.050)
    delay.observe_service(0.130)    # 50 + (130 - 50) / 8 = 60 ms
    assert delay.service_time == pytest.approx(0.060)
    delay.observe_service(0.004)    # 60 + (4 - 60) / 8 = 53 ms
    assert delay.target == pytest.approx(0.053)
    # Waited 40 and 52 ms: above 10 but below 53: not standing however long.
    assert not delay.standing("a", 0.0, 0.040)
    assert not delay.standing("a", 0.0, 0.052)
    assert not delay.standing("a", 0.0, 1.0)    # above 53 ms: the interval starts
    assert not delay.standing("a", 0.0, 1.09)
    assert delay.standing("a", 0.0, 1.11)


def test_the_expected_wait_is_one_service_time_per_turn_of_the_share():
    delay = QueueDelay(target=0.005, interval=0.1)
    assert delay.expected_wait(10, 2) == 0       # nothing measured yet
    delay.observe_service(0.1)
    assert [delay.expected_wait(w, 2) for w in (0, 1, 2, 3, 4)] == pytest.approx(
        [0.1, 0.1, 0.2, 0.2, 0.3])
    assert delay.expected_wait(3, 0) == pytest.approx(0.4)  # a share of 0 counts as 1


@pytest.mark.parametrize("target,interval", [(-0.001, 0.1), (0.005, 0.0)])
def test_bad_settings_are_refused_with_the_values(target, interval):
    with pytest.raises(ValueError, match="target must be >= 0"):
        QueueDelay(target, interval)
