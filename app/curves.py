"""Maths over a run's logged curves, for the charts and the alerts: the EMA that smooths a curve, and the step
from which likelihood displacement holds. Pure functions over lists of numbers."""
from __future__ import annotations

import math


def ema(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled towards 0); a
    NaN point stays NaN and does not reset the average."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(float("nan"))
            continue
        avg, n = weight * avg + (1 - weight) * v, n + 1
        out.append(avg / (1 - weight ** n))
    return out


def displacement_start(steps: list[int], chosen: list[float], rejected: list[float], baseline: int = 3,
                       drop: float = 1.0) -> int | None:
    """The first step at which both the chosen and the rejected answers' log-probabilities (smoothed) are `drop`
    nats below where they started (the mean of the first `baseline` logged steps), or None. It reads the whole
    run so far, so once seen it stays: a later wobble neither hides it nor a finished run loses it."""
    if len(steps) < 2 * baseline:
        return None
    c, r = ema(chosen), ema(rejected)
    c0, r0 = sum(chosen[:baseline]) / baseline, sum(rejected[:baseline]) / baseline
    for step, cv, rv in list(zip(steps, c, r))[baseline:]:
        if cv < c0 - drop and rv < r0 - drop:
            return step
    return None
