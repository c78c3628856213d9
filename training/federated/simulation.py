"""Federated training on one machine: every site in one process, one base model in memory, the LoRA weights
swapped in per site. The client step (`SiteClient.fit`) and the server step (`aggregate`) are the same ones the
Flower apps use across machines.

Per round: sample sites (seeded), each trains `local_steps` optimizer steps from the global adapter on its own
rows, the server aggregates (FedAvg by example count, FedProx, FedAdam, FedYogi). Metrics lines carry `site` and
`round`; per-instance rows carry their site, so the Runs page draws per-site curves and m_theta drift.
"""
from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import pandas as pd
import torch

from storage import rundir
from training.config import JobConfig
from training.federated import partition
from training.federated.aggregators import ServerOptimizer, aggregate, proximal_term
from training.modeling import load_trainable_state, trainable_state


class SiteClient:
    """One site: its rows, its own Trainer on the shared model, its KTO class weights."""

    def __init__(self, name: str, rows: pd.DataFrame, cfg: JobConfig, run_dir: Path, model=None, tokenizer=None,
                 eval_rows: pd.DataFrame | None = None):
        from training.trainer import Trainer

        self.name, self.n = name, len(rows)
        site_dir = run_dir / "sites" / _safe(name)
        (site_dir / rundir.DATA).mkdir(parents=True, exist_ok=True)
        rows.to_parquet(site_dir / rundir.TRAIN_DATA, index=False)
        if eval_rows is not None:   # the server's held-out set, evaluated with the global weights each round
            eval_rows.to_parquet(site_dir / rundir.EVAL_DATA, index=False)
        site_cfg = copy.deepcopy(cfg)
        site_cfg.federated = None
        site_cfg.max_steps = cfg.federated.rounds * cfg.federated.local_steps
        if cfg.algorithm == "kto":   # each site balances its own classes (lambda_D = n_U / n_D)
            site_cfg.desirable_weight, site_cfg.undesirable_weight = partition.site_kto_weights(rows)
        self.cfg = site_cfg
        self.trainer = Trainer(site_cfg, site_dir).prepare(model=model, tokenizer=tokenizer)

    def fit(self, global_state: dict, local_steps: int, mu: float = 0.0) -> tuple[dict, list[dict], list[dict]]:
        """Train from the global weights; returns (new weights, per-step scalars, per-instance rows)."""
        tr = self.trainer
        load_trainable_state(tr.model, global_state)
        if mu > 0:
            params = {k: p for k, p in tr.model.named_parameters() if p.requires_grad}
            tr.extra_loss = lambda: proximal_term(params, global_state, mu)
        scalars, instances = [], []
        for _ in range(local_steps):
            s, inst = tr.train_step()
            scalars.append(s)
            for row in inst:
                row["site"] = self.name
            instances += inst
        tr.extra_loss = None
        return trainable_state(tr.model), scalars, instances


def prepare_sites(cfg: JobConfig, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per site for the configured setting; DPO on KTO-R data is refused by JobConfig.validate."""
    f = cfg.federated
    if cfg.data_kind == "unpaired":
        df = partition.to_unpaired(df)
        if f.setting == "kto-r":
            df = partition.kto_r(df, cfg.seed, f.site_column)
    sites = partition.by_site(df, f.site_column)
    if len(sites) < 2:
        raise ValueError("Federated training needs rows from at least two sites.")
    return sites


def run_federated(cfg: JobConfig, run_dir: str | Path) -> str:
    from training.trainer import JobError

    run_dir = Path(run_dir)
    f = cfg.federated
    df = pd.read_parquet(run_dir / rundir.TRAIN_DATA)
    try:
        sites = prepare_sites(cfg, df)
    except ValueError as e:
        raise JobError(str(e)) from None
    names = sorted(sites)
    rundir.write_status(run_dir, state="running", phase=f"preparing {len(names)} sites", step=0, total=f.rounds)
    eval_path = run_dir / rundir.EVAL_DATA
    first = SiteClient(names[0], sites[names[0]], cfg, run_dir,
                       eval_rows=pd.read_parquet(eval_path) if eval_path.exists() else None)
    model, tok = first.trainer.model, first.trainer.tokenizer
    clients = {names[0]: first}
    for n in names[1:]:
        clients[n] = SiteClient(n, sites[n], cfg, run_dir, model=model, tokenizer=tok)
    global_state = trainable_state(model)
    server = ServerOptimizer(f.aggregator, f.server_lr, f.server_beta1, f.server_beta2, f.server_tau) \
        if f.aggregator in ("fedadam", "fedyogi") else None
    rng = random.Random(cfg.seed)
    k = f.clients_per_round or len(names)
    t0 = time.time()
    for rnd in range(1, f.rounds + 1):
        chosen = sorted(rng.sample(names, min(k, len(names))))
        states, weights = [], []
        for name in chosen:
            state, scalars, instances = clients[name].fit(global_state, f.local_steps,
                                                          f.mu if f.aggregator == "fedprox" else 0.0)
            states.append(state)
            weights.append(clients[name].n)
            for i, s in enumerate(scalars):
                step = (rnd - 1) * f.local_steps + i + 1
                rundir.append_metrics(run_dir, {"step": step, "time": time.time(), "split": "train", "site": name,
                                                "round": rnd, **s})
            for row in instances:
                row["step"] = rnd * f.local_steps
            if instances:
                rundir.write_instances(run_dir, rnd * f.local_steps, instances, tag=_safe(name))
        new_state = aggregate(f.aggregator, global_state, states, weights, server)
        drift = sum(float((new_state[n] - global_state[n]).norm()) for n in global_state)
        global_state = new_state
        load_trainable_state(model, global_state)
        record = {"step": rnd * f.local_steps, "time": time.time(), "split": "train", "round": rnd,
                  "federated/sites": len(chosen), "federated/update_norm": drift}
        ev = first.trainer.evaluate() if first.trainer.eval_examples else {}
        rundir.append_metrics(run_dir, record)
        if ev:
            rundir.append_metrics(run_dir, {"step": rnd * f.local_steps, "time": time.time(), "split": "eval",
                                            "round": rnd, **ev})
        eta = (time.time() - t0) / rnd * (f.rounds - rnd)
        rundir.write_status(run_dir, step=rnd, total=f.rounds, eta_s=round(eta, 1), phase=f"round {rnd} of {f.rounds}")
    model.save_pretrained(run_dir / rundir.ADAPTER)
    rundir.write_status(run_dir, state="finished", phase="finished", step=f.rounds)
    return "finished"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "site"
