"""Server-side aggregation of LoRA weights. States are dicts name -> tensor (the trainable LoRA tensors only).

Numerically Flower's own strategies (flwr.server.strategy, tests/test_federated.py checks them on the same
client updates), except that v starts at tau^2 as in Reddi et al. 2021 and the authors' code (Flower starts at 0):
- FedAvg: the example-count weighted mean of the sites' weights.
- FedProx: FedAvg on the server; each site adds mu/2 * ||w - w_global||^2 to its local loss (`proximal_term`).
- FedAdam / FedYogi / FedAdagrad: the averaged delta d = avg - w_global is a pseudo-gradient;
  m <- b1 m + (1 - b1) d (Adagrad: b1 = 0, m = d, as in Flower);  Adam: v <- b2 v + (1 - b2) d^2;  Yogi: v <- v - (1 - b2) d^2 sign(v - d^2);
  Adagrad: v <- v + d^2;  w <- w_global + lr_t * m / (sqrt(v) + tau), with lr_t = lr for Yogi and Adagrad and,
  for Adam, Flower's bias-corrected lr sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) at server round t.
- FedAvgM: g = w_global - avg; momentum u <- mu u + g (u = g in round 1); w <- w_global - lr u.
"""
from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def fedavg(states: list[State], weights: list[float]) -> State:
    if not states:
        raise ValueError("No site sent weights this round.")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("Site weights must add up to more than zero.")
    return {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype)
            for k in states[0]}


def proximal_term(params: dict[str, torch.Tensor], global_state: State, mu: float) -> torch.Tensor:
    """mu/2 * sum ||w - w_global||^2 over the trainable tensors (differentiable in params)."""
    total = None
    for k, p in params.items():
        d = (p - global_state[k].to(p.device, p.dtype)).pow(2).sum()
        total = d if total is None else total + d
    return 0.5 * mu * total


class ServerOptimizer:
    """FedAdam / FedYogi / FedAdagrad / FedAvgM state kept by the server across rounds (float64)."""

    def __init__(self, kind: str, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 momentum: float = 0.9, momentum_lr: float = 1.0):
        if kind not in ("fedadam", "fedyogi", "fedadagrad", "fedavgm"):
            raise ValueError(f"Unknown server optimizer {kind!r}.")
        self.kind, self.lr, self.b1, self.b2, self.tau = kind, lr, beta1, beta2, tau
        self.momentum, self.momentum_lr = momentum, momentum_lr
        self.t = 0           # server rounds aggregated so far
        self.m: State = {}   # first moment (FedAvgM: the momentum buffer)
        self.v: State = {}

    def step(self, global_state: State, averaged: State) -> State:
        self.t += 1
        out = {}
        for k, w in global_state.items():
            w64 = w.double()
            d = averaged[k].double() - w64
            if self.kind == "fedavgm":
                g = -d
                u = g if self.t == 1 or k not in self.m else self.momentum * self.m[k] + g
                self.m[k] = u
                out[k] = (w64 - self.momentum_lr * u).to(w.dtype)
                continue
            b1 = 0.0 if self.kind == "fedadagrad" else self.b1      # Flower's FedAdagrad has no first moment
            m = b1 * self.m.get(k, torch.zeros_like(d)) + (1 - b1) * d
            v = self.v.get(k, torch.full_like(d, self.tau ** 2))
            if self.kind == "fedadam":
                v = self.b2 * v + (1 - self.b2) * d * d
                lr = self.lr * (1 - self.b2 ** (self.t + 1)) ** 0.5 / (1 - self.b1 ** (self.t + 1))
            elif self.kind == "fedyogi":
                v = v - (1 - self.b2) * d * d * torch.sign(v - d * d)
                lr = self.lr
            else:
                v = v + d * d
                lr = self.lr
            self.m[k], self.v[k] = m, v
            out[k] = (w64 + lr * m / (v.sqrt() + self.tau)).to(w.dtype)
        return out


def weighted_mean(values: list[float], weights: list[float]) -> float:
    """The example-count weighted mean of one number per site (eps-DPO's beta), as FedAvg weighs tensors."""
    return float(sum(v * w for v, w in zip(values, weights)) / sum(weights))


def aggregate(kind: str, global_state: State, states: list[State], weights: list[float],
              server: ServerOptimizer | None = None) -> State:
    averaged = fedavg(states, weights)
    if kind in ("fedavg", "fedprox"):
        return averaged
    if server is None:
        raise ValueError(f"{kind} needs its server optimizer state.")
    return server.step(global_state, averaged)
