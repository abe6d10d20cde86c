"""Greedy, beam and sampling decoding against a hand-worked bigram model.

Units: PAD 0, BOS 1, EOS 2, UNK 3, a 4, b 5. Next-unit probabilities by the last unit (source
0; source 1 swaps a and b everywhere):

    after BOS:  a .55  b .45
    after a:    EOS .40  a .30  b .30
    after b:    EOS .90  a .05  b .05

Greedy: a, then EOS: p = .55 * .40 = .22 (mean log-prob ln(.22) / 2).
Beam 2, step 2 candidates: b.EOS .405, a.EOS .22, a.a .165, a.b .165, b.a .0225, b.b .0225 ->
both best end: [b] (mean ln(.405)/2 = -0.452) ranks above [a] (ln(.22)/2 = -0.757).
"""
import itertools
import math

import numpy as np
import pytest

from dpsr_tf.rewriting import decoding

A, B, EOS = 4, 5, 2
TABLE = {1: {A: .55, B: .45}, A: {EOS: .40, A: .30, B: .30}, B: {EOS: .90, A: .05, B: .05}}


def _probs(source, last):
    swap = {A: B, B: A}
    if source == 1:
        last = swap.get(last, last)
    out = np.zeros(6)
    for unit, p in TABLE[last].items():
        out[swap.get(unit, unit) if source == 1 else unit] = p
    return out


def step(sources, prefixes):
    last = [row[row > 0][-1] for row in prefixes]
    with np.errstate(divide="ignore"):
        return np.log(np.stack([_probs(s, l) for s, l in zip(sources, last)]))


def test_greedy_is_the_hand_worked_path_per_source():
    got = decoding.greedy(step, 2, max_len=5)
    assert [h.units for h in got] == [(A,), (B,)]
    assert got[0].log_prob == pytest.approx(math.log(.22))
    assert got[0].score == pytest.approx(math.log(.22) / 2)


def test_beam_finds_the_more_probable_sequence_greedy_misses():
    got = decoding.beam_search(step, 1, max_len=5, beam_size=2, num_return=2)[0]
    assert [h.units for h in got] == [(B,), (A,)]
    assert [h.score for h in got] == pytest.approx([math.log(.405) / 2, math.log(.22) / 2])


def test_max_len_ends_a_hypothesis_without_eos():
    got = decoding.greedy(step, 1, max_len=1)[0]
    assert got.units == (A,) and got.scored == 1
    assert got.log_prob == pytest.approx(math.log(.55))


def _exact_distribution(max_len):
    """P(sequence) of every output of at most max_len units, by enumeration."""
    out = {}
    for n in range(1, max_len + 1):
        for seq in itertools.product([A, B], repeat=n):
            p, last = 1.0, 1
            for u in seq:
                p *= TABLE[last][u]
                last = u
            if n < max_len:
                p *= TABLE[last][EOS]
            out[seq] = p
    return out


def test_sampling_frequencies_match_the_model():
    got = decoding.sample(step, 1, max_len=2, num_samples=4000, seed=7)[0]
    exact = _exact_distribution(2)
    assert sum(exact.values()) == pytest.approx(1.0)
    counts = {}
    for h in got:
        counts[h.units] = counts.get(h.units, 0) + 1
        # The model's own probability (at max_len a sequence ends without EOS).
        assert h.log_prob == pytest.approx(math.log(exact[h.units]))
    for seq, p in exact.items():
        assert counts.get(seq, 0) / 4000 == pytest.approx(p, abs=0.03), seq


def test_sampling_is_seeded_and_cut_by_top_k_and_top_p():
    a = decoding.sample(step, 2, 4, 50, seed=3)
    b = decoding.sample(step, 2, 4, 50, seed=3)
    assert a == b
    # top_k = 1 is greedy.
    for hyps, want in zip(decoding.sample(step, 2, 5, 10, seed=1, top_k=1), [(A,), (B,)]):
        assert {h.units for h in hyps} == {want}
    # Nucleus .5 after BOS keeps only a (.55 >= .5); after a, EOS (.40) alone is not enough.
    first = {h.units[0] for h in decoding.sample(step, 1, 3, 200, seed=2, top_p=.5)[0]}
    assert first == {A}


@pytest.mark.parametrize("kwargs", [dict(top_k=-1), dict(top_p=0.0), dict(temperature=0.0),
                                    dict(top_p=float("nan")), dict(temperature=float("nan"))])
def test_bad_sampling_settings_are_errors(kwargs):
    with pytest.raises(ValueError):
        decoding.sample(step, 1, 3, 1, seed=0, **kwargs)
