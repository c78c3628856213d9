"""Federated training on one machine: every site in one process, one base model in memory, the LoRA weights
swapped in per site. The client step (`SiteClient.fit`) and the server's round loop (rounds.py) are the same ones
the Flower apps use across machines.

Metrics lines carry `site` and `round`; per-instance rows carry their site, so the Runs page draws per-site curves
and m_theta drift.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from storage import rundir
from training.config import JobConfig
from training.federated import partition
from training.federated.aggregators import proximal_term
from training.federated.rounds import SiteUpdate, run_rounds
from training.modeling import load_trainable_state, trainable_state
from training.runtime import JobError, Status, heartbeat, site_dirname


def restart_local_optimizer(trainer, steps: int) -> None:
    """A fresh AdamW (no moments) and a learning-rate schedule over `steps`, as the authors' code builds a new
    local trainer every round. The torch objects are replaced inside accelerate's wrappers, so checkpoints save
    them as before."""
    from transformers import get_scheduler

    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    opt.state.clear()
    cfg = trainer.cfg
    schedule = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    if hasattr(trainer.scheduler, "scheduler"):
        trainer.scheduler.scheduler = schedule
    else:
        trainer.scheduler = schedule


def site_config(cfg: JobConfig, rows: pd.DataFrame) -> JobConfig:
    """A site's own job: every round's steps on its rows; KTO keeps the user's lambdas unless the run balances
    each site's classes (lambda_D = n_U / n_D of the site's own data, the authors' setting)."""
    site_cfg = copy.deepcopy(cfg)
    site_cfg.federated = None
    site_cfg.max_steps = cfg.federated.rounds * cfg.federated.local_steps
    if cfg.algorithm == "kto" and cfg.federated.balance_kto_per_site:
        site_cfg.desirable_weight, site_cfg.undesirable_weight = partition.site_kto_weights(rows)
    return site_cfg


class SiteClient:
    """One site: its rows, its own Trainer on the shared model, its KTO class weights if it balances its own."""

    def __init__(self, name: str, rows: pd.DataFrame, cfg: JobConfig, run_dir: Path, model=None, tokenizer=None,
                 eval_rows: pd.DataFrame | None = None):
        from training.trainer import Trainer

        self.name, self.n = name, len(rows)
        site_dir = run_dir / "sites" / site_dirname(name)
        (site_dir / rundir.DATA).mkdir(parents=True, exist_ok=True)
        rows.to_parquet(site_dir / rundir.TRAIN_DATA, index=False)
        if eval_rows is not None:   # the server's held-out set, evaluated with the global weights each round
            eval_rows.to_parquet(site_dir / rundir.EVAL_DATA, index=False)
        site_cfg = site_config(cfg, rows)
        self.cfg = site_cfg
        self.fresh_optimizer = cfg.federated.fresh_local_optimizer
        self.trainer = Trainer(site_cfg, site_dir).prepare(model=model, tokenizer=tokenizer)

    def fit(self, global_state: dict, local_steps: int, mu: float = 0.0,
            beta: float | None = None) -> tuple[SiteUpdate, list[dict]]:
        """Train from the global weights (with FedProx's proximal term when mu > 0) and, for eps-DPO, the global
        beta; returns the update for the server and the per-instance rows, which stay at the site."""
        tr = self.trainer
        moves_beta = tr.algorithm.needs_ref_logits        # eps-DPO
        load_trainable_state(tr.model, global_state)
        if moves_beta and beta is not None:
            tr.beta = beta
        if self.fresh_optimizer:
            restart_local_optimizer(tr, local_steps)
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
        return SiteUpdate(self.name, trainable_state(tr.model), self.n, scalars,
                          tr.beta if moves_beta else None), instances


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
    run_dir = Path(run_dir)
    f = cfg.federated
    df = pd.read_parquet(run_dir / rundir.TRAIN_DATA)
    try:
        sites = prepare_sites(cfg, df)
    except ValueError as e:
        raise JobError(str(e)) from None
    names = sorted(sites)
    status = Status(run_dir)
    status(state="running", phase=f"preparing {len(names)} sites", step=0, total=f.rounds)
    eval_path = run_dir / rundir.EVAL_DATA
    first = SiteClient(names[0], sites[names[0]], cfg, run_dir,
                       eval_rows=pd.read_parquet(eval_path) if eval_path.exists() else None)
    model, tok = first.trainer.model, first.trainer.tokenizer
    clients = {names[0]: first}
    for n in names[1:]:
        clients[n] = SiteClient(n, sites[n], cfg, run_dir, model=model, tokenizer=tok)

    def train_round(rnd: int, chosen: list[str], global_state: dict, beta: float) -> list[SiteUpdate]:
        updates = []
        for name in chosen:
            update, instances = clients[name].fit(global_state, f.local_steps, f.proximal_mu, beta)
            updates.append(update)
            for row in instances:
                row["step"] = rnd * f.local_steps
            if instances:
                rundir.write_instances(run_dir, rnd * f.local_steps, instances, tag=site_dirname(name))
        return updates

    evaluate = first.trainer.evaluate if first.trainer.eval_examples else None
    stop_beat = heartbeat(status)
    try:
        return run_rounds(cfg, run_dir, model, lambda: names, train_round, status, evaluate)
    finally:
        stop_beat()
