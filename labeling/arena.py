"""Blind-evaluation maths, pure functions: the win rate of each pair of models with its Wilson interval, and for
three or more models a Bradley-Terry leaderboard as Chatbot Arena shows it.

A judgment is (model_a, model_b, score): score 1 when model_a's answer was preferred, 0 when model_b's was, 0.5 for
a tie or "both bad" (neither preferred). Bradley-Terry says P(i beats j) = p_i / (p_i + p_j); the strengths are
the maximum-likelihood fit (Hunter's MM iteration, a tie counting half a win each way), shown on the Elo scale
(rating = 1000 + 400·log10 p, anchored at 1000 on the base model when it takes part, else on the mean), so a gap of
120 points means the higher one wins 2 of 3. With few judgments a model that won every one would get an infinite
rating: `prior` adds that many virtual tied judgments to each pair of models that met, pulling ratings toward each
other. The 95% interval of each rating is the percentile bootstrap over judgments (resampled with a fixed seed).
"""
from __future__ import annotations

import math

import numpy as np

from labeling.stats import direction, wilson

SCALE, CENTRE = 400.0, 1000.0


def win_rates(judgments: list[tuple[str, str, float]]) -> list[dict]:
    """One row per pair of models that met, in order of first meeting: how often `model` beat `opponent` (ties
    half) of n judgments, its Wilson 95% interval, and the direction against an even 50%."""
    pairs: dict[tuple[str, str], list[float]] = {}
    for a, b, s in judgments:
        key = (a, b) if (b, a) not in pairs else (b, a)
        pairs.setdefault(key, []).append(s if key == (a, b) else 1 - s)
    out = []
    for (a, b), scores in pairs.items():
        n, won = len(scores), float(sum(scores))
        low, high = wilson(won, n)
        out.append({"model": a, "opponent": b, "n": n, "wins": sum(s == 1 for s in scores),
                    "ties": sum(s == 0.5 for s in scores), "losses": sum(s == 0 for s in scores),
                    "rate": won / n, "low": low, "high": high, "direction": direction(low, high, 0.5)})
    return out


def _win_matrix(judgments, index: dict[str, int]) -> np.ndarray:
    """W[i, j] = times i beat j (ties half each way)."""
    w = np.zeros((len(index), len(index)))
    for a, b, s in judgments:
        i, j = index[a], index[b]
        w[i, j] += s
        w[j, i] += 1 - s
    return w


def strengths(w: np.ndarray, prior: float = 1.0, iters: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry log-strengths (mean 0 over models that played) from a win matrix, by the MM iteration
    p_i = W_i / Σ_j n_ij / (p_i + p_j)."""
    met = (w + w.T) > 0
    w = w + prior / 2 * met
    n = w + w.T
    wins = w.sum(axis=1)
    played = n.sum(axis=1) > 0
    p = np.ones(len(w))
    for _ in range(iters):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(played & (denom > 0), wins / np.where(denom > 0, denom, 1), 1.0)
        new = np.maximum(new, 1e-300)
        new = new / math.exp(np.log(new[played]).mean()) if played.any() else new
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    return np.log(p)


def ratings(judgments: list[tuple[str, str, float]], models: list[str], prior: float = 1.0,
            anchor: str | None = None) -> dict[str, float]:
    """Each model's Bradley-Terry rating on the Elo scale (see the module docstring)."""
    index = {m: i for i, m in enumerate(models)}
    logp = strengths(_win_matrix(judgments, index), prior)
    elo = SCALE * logp / math.log(10)
    shift = elo[index[anchor]] if anchor in index else elo.mean()
    return {m: float(CENTRE + elo[i] - shift) for m, i in index.items()}


def leaderboard(judgments: list[tuple[str, str, float]], anchor: str | None = None, prior: float = 1.0,
                rounds: int = 200, seed: int = 0) -> list[dict]:
    """Models by rating, best first: rating, 95% bootstrap interval, judgments they took part in, and their share
    of wins (ties half). Empty without judgments."""
    if not judgments:
        return []
    models = list(dict.fromkeys(m for a, b, _ in judgments for m in (a, b)))
    point = ratings(judgments, models, prior, anchor)
    rng = np.random.default_rng(seed)
    samples = np.array([list(ratings([judgments[k] for k in rng.integers(0, len(judgments), len(judgments))],
                                     models, prior, anchor).values()) for _ in range(rounds)])
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    rows = []
    for i, m in enumerate(models):
        mine = [s if a == m else 1 - s for a, b, s in judgments if m in (a, b)]
        rows.append({"model": m, "rating": point[m], "low": float(low[i]), "high": float(high[i]),
                     "n": len(mine), "score": float(np.mean(mine))})
    return sorted(rows, key=lambda r: -r["rating"])
