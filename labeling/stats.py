"""95% intervals and the verdict words: pure functions, so every figure Preflab shows can carry its n and interval.

- Proportions (win rates, preference accuracy): the Wilson score interval. Unlike the textbook p ± 1.96·se it
  stays inside 0..1 and is honest at small n (8 of 10 is 49-94%, not 55-105%).
- Means (m_θ, scores): a seeded percentile bootstrap, so the same numbers give the same interval every time.
- The verdict: a run is "better" or "worse" than the base only when its whole interval lies on one side of the
  base's figure; an interval that contains it is "no measurable change", whatever the point estimate says.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054   # the standard normal's 97.5% quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n` (a tie counted as half a success is fine)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean(values, seed: int = 0, resamples: int = 2000, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of `values`, from a fixed seed."""
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(x.mean()), float(low), float(high))


def direction(low: float, high: float, base: float) -> str:
    """'better', 'worse' or 'no measurable change': where the run's interval lies against the base's figure."""
    if low > base:
        return "better"
    if high < base:
        return "worse"
    return "no measurable change"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def verdict(successes: float, n: int, base_rate: float | None, what: str = "held-out pairs") -> dict:
    """A run's verdict in plain words from its preference accuracy on the evaluation set: rate, interval, direction
    against the base and one sentence. Without pairs there is no verdict (direction None)."""
    if n <= 0:
        return {"n": 0, "rate": None, "low": None, "high": None, "direction": None,
                "text": f"No verdict yet: the evaluation set has no {what} to score this run on."}
    rate = successes / n
    low, high = wilson(successes, n)
    text = (f"Prefers the answers your team preferred on {pct(rate)} of {n} {what} "
            f"(95% interval {pct(low)}–{pct(high)})")
    d = None
    if base_rate is not None:
        d = direction(low, high, base_rate)
        text += f"; the base model: {pct(base_rate)}. "
        text += {"better": "Better than the base model.", "worse": "Worse than the base model.",
                 "no measurable change": "No measurable change from the base model (its figure is inside the "
                                         "interval)."}[d]
    else:
        text += "."
    return {"n": n, "rate": rate, "low": low, "high": high, "direction": d, "text": text}
