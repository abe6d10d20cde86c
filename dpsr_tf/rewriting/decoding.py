"""Decoding strategies over any autoregressive step function: greedy, beam, top-k/nucleus.

A step function maps a batch of (source, prefix) pairs to next-unit log-probabilities:

    step(sources [N] int64 source index, prefixes [N, t] int32 unit ids, BOS first)
        -> [N, V] float64 log-probabilities of the next unit

Every strategy forbids the reserved units PAD, BOS and UNK, and EOS as the first unit (an
empty output); at max_len units a hypothesis ends without EOS. A hypothesis's `units` exclude
BOS and EOS; its `log_prob` sums the log-probabilities of its units and of its EOS (when it
has one); its `score` is log_prob / (number of scored units), the mean log-probability, which
ranks beams and rewrites without favouring short outputs.
"""
import dataclasses
from typing import Callable, List, Sequence

import numpy as np

from dpsr_tf.rewriting import units as units_lib

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    units: tuple        # unit ids, without BOS and EOS
    log_prob: float     # sum of the scored units' log-probabilities
    scored: int         # units scored (EOS included when present)

    @property
    def score(self) -> float:
        return self.log_prob / max(self.scored, 1)


def _allowed(logp: np.ndarray, first: bool) -> np.ndarray:
    out = np.array(logp, np.float64, copy=True)
    out[:, [units_lib.PAD, units_lib.BOS, units_lib.UNK]] = -np.inf
    if first:
        out[:, units_lib.EOS] = -np.inf
    return out


def _prefixes(hyps: Sequence[tuple]) -> np.ndarray:
    width = 1 + max(len(h) for h in hyps)
    out = np.full([len(hyps), width], units_lib.PAD, np.int32)
    out[:, 0] = units_lib.BOS
    for i, h in enumerate(hyps):
        out[i, 1:1 + len(h)] = h
    return out


def greedy(step: StepFn, num_sources: int, max_len: int) -> List[Hypothesis]:
    """The most probable unit at each step, for each source."""
    return [b[0] for b in beam_search(step, num_sources, max_len, beam_size=1, num_return=1)]


def beam_search(step: StepFn, num_sources: int, max_len: int, beam_size: int,
                num_return: int) -> List[List[Hypothesis]]:
    """The num_return best hypotheses of each source by score (module docstring).

    Each step keeps, per source, the beam_size best continuations by summed log-probability
    (ties: lower unit id, then earlier hypothesis); a continuation that emits EOS is finished.
    Search stops when a source has beam_size finished hypotheses or at max_len units.
    """
    if not 1 <= num_return <= beam_size:
        raise ValueError(f"need 1 <= num_return <= beam_size, got {num_return}, {beam_size}")
    alive = [[((), 0.0)] for _ in range(num_sources)]
    finished = [[] for _ in range(num_sources)]
    for t in range(max_len):
        flat = [(s, h) for s in range(num_sources) for h in alive[s]
                if len(finished[s]) < beam_size]
        if not flat:
            break
        logp = _allowed(step(np.array([s for s, _ in flat], np.int64),
                             _prefixes([h[0] for _, h in flat])), first=t == 0)
        new_alive = [[] for _ in range(num_sources)]
        for s in range(num_sources):
            rows = [i for i, (src, _) in enumerate(flat) if src == s]
            if not rows:
                continue
            cands = []
            for i in rows:
                units, lp = flat[i][1]
                for u in np.argsort(-logp[i], kind="stable")[:beam_size]:
                    if np.isfinite(logp[i, u]):
                        cands.append((lp + logp[i, u], i, int(u)))
            cands.sort(key=lambda c: (-c[0], c[2], c[1]))
            for lp, i, u in cands[:beam_size]:
                units = flat[i][1][0]
                if u == units_lib.EOS:
                    finished[s].append(Hypothesis(units, float(lp), len(units) + 1))
                elif t + 1 == max_len:
                    finished[s].append(Hypothesis(units + (u,), float(lp), len(units) + 1))
                else:
                    new_alive[s].append((units + (u,), lp))
        alive = new_alive
    out = []
    for s in range(num_sources):
        ranked = sorted(finished[s], key=lambda h: -h.score)
        out.append(ranked[:num_return])
    return out


def sample(step: StepFn, num_sources: int, max_len: int, num_samples: int, seed: int,
           top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0) -> List[List[Hypothesis]]:
    """num_samples independent samples per source (duplicates kept, in draw order).

    At each step the log-probabilities are divided by temperature, cut to the top_k most
    probable units (0 = all) and then to the smallest set whose probability reaches top_p
    (nucleus; the most probable unit is always kept), renormalized, and one unit is drawn
    with numpy's Generator(PCG64(seed)). A Hypothesis's log_prob is the model's own
    (untempered, uncut) log-probability of the drawn units.
    """
    if top_k < 0 or not 0 < top_p <= 1 or not temperature > 0:  # NaN fails both tests
        raise ValueError(f"need top_k >= 0, 0 < top_p <= 1, temperature > 0; got {top_k}, "
                         f"{top_p}, {temperature}")
    rng = np.random.Generator(np.random.PCG64(seed))
    sources = np.repeat(np.arange(num_sources, dtype=np.int64), num_samples)
    units = [()] * len(sources)
    log_prob = np.zeros(len(sources))
    done = np.zeros(len(sources), bool)
    ended = np.zeros(len(sources), bool)
    for t in range(max_len):
        live = np.flatnonzero(~done)
        if not len(live):
            break
        logp = _allowed(step(sources[live], _prefixes([units[i] for i in live])), t == 0)
        for row, i in enumerate(live):
            probs = _cut(logp[row] / temperature, top_k, top_p)
            u = int(rng.choice(len(probs), p=probs))
            log_prob[i] += logp[row, u]
            if u == units_lib.EOS:
                done[i] = ended[i] = True
            else:
                units[i] = units[i] + (u,)
                done[i] = t + 1 == max_len
    out = [[] for _ in range(num_sources)]
    for i, s in enumerate(sources):
        out[s].append(Hypothesis(units[i], float(log_prob[i]), len(units[i]) + int(ended[i])))
    return out


def _cut(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """[V] probabilities of the kept units (top_k, then nucleus top_p), 0 elsewhere."""
    if top_k and top_k < len(logits):
        # Same set and order as a full stable sort cut at top_k, in O(V): ties at the cut
        # keep the lower unit ids.
        threshold = np.partition(-logits, top_k - 1)[top_k - 1]
        candidates = np.flatnonzero(-logits <= threshold)
        order = candidates[np.argsort(-logits[candidates], kind="stable")][:top_k]
    else:
        order = np.argsort(-logits, kind="stable")
    order = order[np.isfinite(logits[order])]
    kept = logits[order]
    p = np.exp(kept - kept.max())
    p /= p.sum()
    if top_p < 1:
        # Smallest prefix whose mass reaches top_p (the first unit always stays).
        n = int(np.searchsorted(np.cumsum(p), top_p - 1e-12)) + 1
        order, p = order[:n], p[:n] / p[:n].sum()
    out = np.zeros(len(logits))
    out[order] = p
    return out
