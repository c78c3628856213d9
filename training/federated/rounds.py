"""The server's round loop, one for both deployments: the simulation (every site in this process) and Flower (one
SuperNode per site). Only how a round reaches the sites differs, so that is the one thing the caller passes in.

Per round: sample sites (seeded), let them train `local_steps` from the global adapter, write their per-step
metrics (with `site` and `round`), aggregate (FedAvg by example count, FedProx, or a server optimizer: FedAdam,
FedYogi, FedAdagrad, FedAvgM), record how far the global adapter moved, and evaluate it where the caller can.
eps-DPO's beta is global state too: each site starts a round from the global beta, moves it while training, and
the server averages the sites' betas with the FedAvg weights. At the end the global adapter is the run's.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

from storage import rundir
from training.config import JobConfig
from training.config import SERVER_OPTIMIZERS
from training.federated.aggregators import ServerOptimizer, State, aggregate, weighted_mean
from training.modeling import load_trainable_state, trainable_state
from training.runtime import Status


@dataclass
class SiteUpdate:
    """What a site sends back after a round: its new LoRA tensors, its example count, its per-step scalars."""
    site: str
    state: State
    n_examples: float
    scalars: list[dict]
    beta: float | None = None     # eps-DPO: the site's beta after its local steps


def run_rounds(cfg: JobConfig, run_dir: Path, model, sites: Callable[[], list[Hashable]],
               train_round: Callable[[int, list[Hashable], State, float], list[SiteUpdate]], status: Status,
               evaluate: Callable[[], dict] | None = None) -> str:
    """Train `model`'s adapter over cfg.federated.rounds. `sites()` lists who can take part now (sites may join or
    leave between rounds); `train_round(round, chosen, global_state, beta)` returns the updates of the chosen sites
    that finished; `evaluate()` scores `model`, which holds the global weights after each round."""
    f = cfg.federated
    global_state = trainable_state(model)
    beta = cfg.beta
    server = ServerOptimizer(f.aggregator, f.server_lr, f.server_beta1, f.server_beta2, f.server_tau,
                             f.server_momentum, f.momentum_lr) if f.aggregator in SERVER_OPTIMIZERS else None
    rng = random.Random(cfg.seed)
    t0 = time.time()
    for rnd in range(1, f.rounds + 1):
        pool = sorted(sites())
        chosen = sorted(rng.sample(pool, min(f.clients_per_round or len(pool), len(pool))))
        status(phase=f"round {rnd} of {f.rounds}: {len(chosen)} sites training")
        updates = train_round(rnd, chosen, global_state, beta)
        for u in updates:
            for i, s in enumerate(u.scalars):
                rundir.append_metrics(run_dir, {"step": (rnd - 1) * f.local_steps + i + 1, "time": time.time(),
                                                "split": "train", "site": u.site, "round": rnd, **s})
        new_state = aggregate(f.aggregator, global_state, [u.state for u in updates],
                              [u.n_examples for u in updates], server)
        drift = sum(float((new_state[n] - global_state[n]).norm()) for n in global_state)
        global_state = new_state
        load_trainable_state(model, global_state)
        betas = [(u.beta, u.n_examples) for u in updates if u.beta is not None]
        if betas:
            beta = weighted_mean(*zip(*betas))
        step = rnd * f.local_steps
        rundir.append_metrics(run_dir, {"step": step, "time": time.time(), "split": "train", "round": rnd,
                                        "federated/sites": len(updates),
                                        "federated/sites_lost": len(chosen) - len(updates),
                                        "federated/update_norm": drift, **({"federated/beta": beta} if betas else {})})
        ev = evaluate() if evaluate else {}
        if ev:
            rundir.append_metrics(run_dir, {"step": step, "time": time.time(), "split": "eval", "round": rnd, **ev})
        eta = (time.time() - t0) / rnd * (f.rounds - rnd)
        status(step=rnd, total=f.rounds, eta_s=round(eta, 1))
    model.save_pretrained(run_dir / rundir.ADAPTER)
    status(state="finished", phase="finished", step=f.rounds, total=f.rounds)
    return "finished"
