"""Intervals and verdict words (labeling/stats.py) against values computed independently."""
import math

import numpy as np
import pytest

from labeling.stats import bootstrap_mean, direction, verdict, wilson


def wilson_by_quadratic(k, n, z=1.959963984540054):
    """Wilson's interval as the roots of (p̂ - p)² = z² p(1-p)/n: a different route to the same bounds."""
    phat = k / n
    a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k, n, low, high", [(8, 10, 0.4902, 0.9433),     # the textbook example
                                              (0, 10, 0.0, 0.2775),       # no successes: still a finite upper bound
                                              (10, 10, 0.7225, 1.0),
                                              (64, 100, 0.5424, 0.7273)])
def test_wilson_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_equals_the_quadratic_roots_and_stays_in_range():
    for k, n in [(1, 3), (17, 40), (120, 300), (299, 300)]:
        assert wilson(k, n) == pytest.approx(wilson_by_quadratic(k, n), abs=1e-12)
    assert wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_mean_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(1).normal(2.0, 1.0, 400)
    m, lo, hi = bootstrap_mean(x, seed=3)
    assert (m, lo, hi) == bootstrap_mean(x, seed=3)              # same seed, same interval
    se = x.std(ddof=1) / math.sqrt(len(x))                       # the normal approximation, for comparison
    assert m == pytest.approx(x.mean())
    assert lo == pytest.approx(m - 1.96 * se, abs=0.25 * se) and hi == pytest.approx(m + 1.96 * se, abs=0.25 * se)


def test_direction_comes_from_the_interval_not_the_point_estimate():
    assert direction(0.55, 0.72, 0.5) == "better"
    assert direction(0.30, 0.45, 0.5) == "worse"
    # 58% looks better than 50%, but with 20 pairs the interval holds 50%
    lo, hi = wilson(11.6, 20)
    assert direction(lo, hi, 0.5) == "no measurable change"


def test_verdict_sentence_names_rate_n_interval_and_base():
    v = verdict(77, 120, 0.5)
    assert v["direction"] == "better"
    assert v["text"].startswith("Prefers the answers your team preferred on 64% of 120 held-out pairs "
                                "(95% interval 55%–72%); the base model: 50%.")
    assert verdict(55, 120, 0.5)["direction"] == "no measurable change"
    assert verdict(40, 120, 0.5)["direction"] == "worse"
    assert verdict(0, 0, 0.5)["direction"] is None and "No verdict yet" in verdict(0, 0, 0.5)["text"]
