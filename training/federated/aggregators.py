"""Server-side aggregation of LoRA weights. States are dicts name -> tensor (the trainable LoRA tensors only).

- FedAvg: the example-count weighted mean of the sites' weights.
- FedProx: FedAvg on the server; each site adds mu/2 * ||w - w_global||^2 to its local loss (`proximal_term`).
- FedAdam / FedYogi (Reddi et al. 2021, as in Flower): the averaged delta d = avg - w_global is a pseudo-gradient;
  m <- b1 m + (1 - b1) d;  Adam: v <- b2 v + (1 - b2) d^2;  Yogi: v <- v - (1 - b2) d^2 sign(v - d^2);
  w <- w_global + lr * m / (sqrt(v) + tau).  (No bias correction, as in Flower.)
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
    """FedAdam / FedYogi state kept by the server across rounds."""

    def __init__(self, kind: str, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        if kind not in ("fedadam", "fedyogi"):
            raise ValueError(f"Unknown server optimizer {kind!r}.")
        self.kind, self.lr, self.b1, self.b2, self.tau = kind, lr, beta1, beta2, tau
        self.m: State = {}
        self.v: State = {}

    def step(self, global_state: State, averaged: State) -> State:
        out = {}
        for k, w in global_state.items():
            d = averaged[k].double() - w.double()
            m = self.m.get(k, torch.zeros_like(d))
            v = self.v.get(k, torch.zeros_like(d))
            m = self.b1 * m + (1 - self.b1) * d
            if self.kind == "fedadam":
                v = self.b2 * v + (1 - self.b2) * d * d
            else:
                v = v - (1 - self.b2) * d * d * torch.sign(v - d * d)
            self.m[k], self.v[k] = m, v
            out[k] = (w.double() + self.lr * m / (v.sqrt() + self.tau)).to(w.dtype)
        return out


def aggregate(kind: str, global_state: State, states: list[State], weights: list[float],
              server: ServerOptimizer | None = None) -> State:
    averaged = fedavg(states, weights)
    if kind in ("fedavg", "fedprox"):
        return averaged
    if server is None:
        raise ValueError(f"{kind} needs its server optimizer state.")
    return server.step(global_state, averaged)
