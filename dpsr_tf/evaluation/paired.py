"""Paired comparison of two systems over the same requests.

Two rankers evaluated on one split share their requests, so the right question is whether one
is better *on the same queries*, not whether two means differ. For per-request values a and b
([n] each, request i answered by both) this module reports:

  diff       = mean(a - b);
  ci_low/ci_high = the percentile interval of the mean difference over `num_samples` paired
               bootstrap resamples of the requests (seeded);
  p_value    = two-sided paired randomization (sign-flip) test of "a and b are exchangeable on
               every request": the share of the 2^n sign assignments of the differences whose
               |mean| is >= the observed one; exact for n <= EXACT_MAX_REQUESTS, otherwise
               `num_samples` random assignments with the (count + 1) / (samples + 1) estimate;
  wins/losses/ties = requests where a > b, a < b, a == b.
"""
import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence

import numpy as np

EXACT_MAX_REQUESTS = 16
DEFAULT_METRICS = ("recall@100", "recall@1000", "ndcg@10")


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """One paired comparison (module docstring); `a` and `b` name the systems."""

    metric: str
    a: str
    b: str
    requests: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    losses: int
    ties: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        return (f"{self.metric:12s} {self.a} {self.mean_a:.4f} vs {self.b} {self.mean_b:.4f}: "
                f"diff {self.diff:+.4f} [{self.ci_low:+.4f}, {self.ci_high:+.4f}] "
                f"p={self.p_value:.4g} (wins {self.wins} / losses {self.losses} / ties "
                f"{self.ties} of {self.requests})")


def _sign_flip_p_value(d: np.ndarray, num_samples: int, rng: np.random.RandomState) -> float:
    observed = abs(d.mean())
    # Compare with a little slack so that flips giving the same |mean| up to rounding count.
    slack = 1e-12 * max(1.0, float(np.abs(d).sum()))
    if len(d) <= EXACT_MAX_REQUESTS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float((np.abs(signs @ d) / len(d) >= observed - slack).mean())
    count = 0
    for lo in range(0, num_samples, 1024):
        signs = rng.choice((1.0, -1.0), size=(min(1024, num_samples - lo), len(d)))
        count += int((np.abs(signs @ d) / len(d) >= observed - slack).sum())
    return (count + 1) / (num_samples + 1)


def paired_test(a: Sequence[float], b: Sequence[float], metric: str = "", name_a: str = "a",
                name_b: str = "b", num_samples: int = 10000, confidence: float = 0.95,
                seed: int = 0) -> PairedResult:
    """Paired bootstrap interval and sign-flip test of mean(a - b) (module docstring).

    Args:
      a, b: [n] per-request values of the two systems, request i in both.
      metric, name_a, name_b: labels carried into the result.
      num_samples: bootstrap resamples and (for n > EXACT_MAX_REQUESTS) random sign flips.
      confidence: coverage of the bootstrap interval.
      seed: seed of the resampling.

    Raises:
      ValueError: different lengths, no request, or values that are not finite.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two [n] arrays over the same requests; got shapes "
                         f"{a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("paired_test needs at least one request")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"paired_test: {metric or 'values'} must be finite")
    if not 0.0 < confidence < 1.0 or num_samples < 1:
        raise ValueError(f"paired_test: confidence in (0, 1) and num_samples >= 1; got "
                         f"{confidence}, {num_samples}")
    rng = np.random.RandomState(seed)
    d = a - b
    means = np.empty(num_samples)
    for lo in range(0, num_samples, 256):
        hi = min(num_samples, lo + 256)
        means[lo:hi] = d[rng.randint(0, len(d), size=(hi - lo, len(d)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedResult(metric=metric, a=name_a, b=name_b, requests=int(len(d)),
                        mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float(d.mean()),
                        ci_low=float(low), ci_high=float(high),
                        p_value=_sign_flip_p_value(d, num_samples, rng),
                        wins=int((d > 0).sum()), losses=int((d < 0).sum()),
                        ties=int((d == 0).sum()))


def compare_systems(per_system: Dict[str, Dict[str, np.ndarray]],
                    metrics: Sequence[str] = DEFAULT_METRICS,
                    baseline: Optional[str] = None, seed: int = 0,
                    num_samples: int = 10000) -> List[PairedResult]:
    """Every pair of systems (or each system against `baseline`) on each metric.

    Args:
      per_system: {system: {metric: [n] values}}, the same n requests in the same order for
        every system.
      metrics: the metrics to compare (those a system lacks are skipped).
      baseline: compare only against this system (None: every pair, in the given order).

    Raises:
      ValueError: an unknown baseline, or systems over different numbers of requests.
    """
    names = list(per_system)
    if baseline is not None and baseline not in per_system:
        raise ValueError(f"baseline {baseline!r} is not among the systems {names}")
    sizes = {name: {len(v) for v in per_system[name].values()} for name in names}
    if len({n for s in sizes.values() for n in s}) > 1:
        raise ValueError(f"systems were evaluated on different requests (counts {sizes}); "
                         "compare systems evaluated on the same split")
    if baseline is not None:
        pairs = [(name, baseline) for name in names if name != baseline]
    else:
        pairs = list(itertools.combinations(names, 2))
    out = []
    for metric in metrics:
        for a, b in pairs:
            if metric in per_system[a] and metric in per_system[b]:
                out.append(paired_test(per_system[a][metric], per_system[b][metric], metric,
                                       a, b, num_samples=num_samples, seed=seed))
    return out
