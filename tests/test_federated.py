"""Federated fine-tuning: aggregators against hand-computed values, real KTO-R permutation, per-site KTO weights,
DPO refused on KTO-R data, and a small in-process simulation over two sites with per-site metrics."""
import pandas as pd
import pytest
import torch

from storage import rundir
from tests.jobdata import data_for
from training.__main__ import run_job
from training.config import ConfigError, FederatedConfig, JobConfig
from training.federated import partition
from training.federated.aggregators import ServerOptimizer, aggregate, fedavg, proximal_term

T = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731


def test_fedavg_weights_by_example_count():
    out = fedavg([{"w": T(1.0, 2.0)}, {"w": T(4.0, 8.0)}], [1, 3])
    assert torch.allclose(out["w"], T(3.25, 6.5))     # (1*1 + 3*4)/4, (1*2 + 3*8)/4


def test_fedprox_term():
    p = {"w": T(1.0, 2.0).requires_grad_()}
    term = proximal_term(p, {"w": T(0.0, 0.0)}, mu=0.1)
    assert term.item() == pytest.approx(0.05 * 5)       # mu/2 * (1 + 4)
    term.backward()
    assert torch.allclose(p["w"].grad, T(0.1, 0.2))      # mu * (w - w_global)


def _flower_strategy(kind: str, initial: dict, lr: float, tau: float):
    """Flower's own strategy for `kind`, started from `initial` with v at tau^2 (as ours; Flower's default is 0)."""
    import numpy as np
    from flwr.common import ndarrays_to_parameters
    from flwr.server import strategy as S

    params = ndarrays_to_parameters([t.numpy() for t in initial.values()])
    if kind == "fedavgm":
        return S.FedAvgM(initial_parameters=params, server_learning_rate=lr, server_momentum=0.9)
    cls = {"fedadam": S.FedAdam, "fedyogi": S.FedYogi, "fedadagrad": S.FedAdagrad}[kind]
    extra = {} if kind == "fedadagrad" else {"beta_1": 0.9, "beta_2": 0.99}
    s = cls(initial_parameters=params, eta=lr, tau=tau, **extra)
    s.v_t = [np.full_like(t.numpy(), tau ** 2) for t in initial.values()]
    return s


@pytest.mark.parametrize("kind", ["fedavg", "fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_aggregators_equal_flowers_strategies_on_the_same_client_updates(kind):
    """Three rounds of three sites with unequal example counts: our global weights are Flower's, to float64
    rounding (Flower's v preset to tau^2, where ours starts; a missing bias correction or momentum would show)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import strategy as S

    gen = torch.Generator().manual_seed(0)
    shapes = {"a.lora_A": (4, 3), "a.lora_B": (3, 4)}
    global_state = {k: torch.randn(*sh, generator=gen, dtype=torch.float64) for k, sh in shapes.items()}
    lr, tau = (1.0 if kind == "fedavgm" else 0.05), 1e-3
    flower = S.FedAvg() if kind == "fedavg" else _flower_strategy(kind, global_state, lr, tau)
    ours = None if kind == "fedavg" else ServerOptimizer(kind, lr=lr, beta1=0.9, beta2=0.99, tau=tau, momentum=0.9,
                                                         momentum_lr=lr)
    for rnd in range(1, 4):
        sites = [{k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
                  for k, v in global_state.items()} for _ in range(3)]
        counts = [5, 17, 2]
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([t.numpy() for t in st.values()]), n, {}))
                   for st, n in zip(sites, counts)]
        theirs = parameters_to_ndarrays(flower.aggregate_fit(rnd, results, [])[0])
        global_state = aggregate(kind, global_state, sites, counts, ours)
        for mine, other in zip(global_state.values(), theirs):
            assert torch.allclose(mine, torch.from_numpy(other), rtol=0, atol=1e-12), (kind, rnd)


def test_server_optimizer_starts_v_at_tau_squared():
    """One FedAdagrad round by hand (no first moment, as Flower's): v = tau^2 + d^2, w = w0 + lr d / (sqrt(v) + tau)."""
    opt = ServerOptimizer("fedadagrad", lr=0.1, tau=0.5)
    out = aggregate("fedadagrad", {"w": T(1.0)}, [{"w": T(3.0)}], [1], opt)
    assert out["w"].item() == pytest.approx(1 + 0.1 * 2 / ((0.25 + 4) ** 0.5 + 0.5), abs=1e-12)


def test_federated_defaults_follow_the_authors_code():
    f = FederatedConfig()
    assert f.server_lr == 1e-3 and f.fresh_local_optimizer and not f.balance_kto_per_site


def test_kto_r_is_a_real_seeded_permutation_keeping_site_sizes():
    df = partition.to_unpaired(data_for("dpo", 8))
    a = partition.kto_r(df, seed=1)
    b = partition.kto_r(df, seed=1)
    c = partition.kto_r(df, seed=2)
    assert a.equals(b) and not a.equals(c)
    assert a["site"].value_counts().to_dict() == df["site"].value_counts().to_dict()
    moved = (a.set_index("example_id")["site"] != df.set_index("example_id").loc[a["example_id"], "site"].values)
    assert moved.any()
    assert sorted(a["example_id"]) == sorted(df["example_id"])          # every row kept exactly once


def test_site_kto_weights_use_the_sites_own_balance():
    df = pd.DataFrame({"label": [True, False, False, False]})
    assert partition.site_kto_weights(df) == (3.0, 1.0)


def test_kto_sites_keep_the_users_lambda_unless_balancing_per_site_is_chosen():
    from training.federated.simulation import site_config

    rows = pd.DataFrame({"label": [True, False, False, False]})
    cfg = JobConfig(algorithm="kto", model="m", desirable_weight=1.7, federated=FederatedConfig())
    assert site_config(cfg, rows).desirable_weight == 1.7
    cfg.federated.balance_kto_per_site = True
    assert (site_config(cfg, rows).desirable_weight, site_config(cfg, rows).undesirable_weight) == (3.0, 1.0)


def test_dpo_on_kto_r_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="no site holds both halves of a pair"):
        JobConfig(algorithm="dpo", model="m", federated=FederatedConfig(setting="kto-r")).validate()


def test_dirichlet_split_covers_every_row():
    df = partition.to_unpaired(data_for("dpo", 8))
    d = partition.dirichlet(df, n_sites=3, alpha=0.5, seed=0)
    assert d["site"].notna().all() and len(d) == len(df)


@pytest.mark.parametrize("algorithm,setting,aggregator", [("kto", "kto-r", "fedavg"), ("dpo", "kto-o", "fedprox"),
                                                          ("kto", "kto-o", "fedadam")])
def test_simulation_trains_every_site_and_moves_the_global_adapter(tmp_path, tiny_model_dir, algorithm, setting,
                                                                   aggregator):
    run = tmp_path / "fed"
    (run / "data").mkdir(parents=True)
    data_for("dpo", 8).to_parquet(run / "data" / "train.parquet")
    data_for("dpo", 4).to_parquet(run / "data" / "eval.parquet")
    JobConfig(algorithm=algorithm, model=str(tiny_model_dir), batch_size=2, learning_rate=5e-3, max_length=64,
              max_prompt_length=32, federated=FederatedConfig(rounds=2, local_steps=2, setting=setting,
                                                              aggregator=aggregator, server_lr=0.05)
              ).save(run / "config.json")
    assert run_job(run) == 0, rundir.read_status(run)
    lines = rundir.read_metrics(run)[0]
    per_site = {l["site"] for l in lines if l.get("site")}
    assert per_site == {"plant-a", "plant-b"}
    rounds = [l for l in lines if "federated/update_norm" in l]
    assert len(rounds) == 2 and all(l["federated/update_norm"] > 0 for l in rounds)
    assert any(l.get("split") == "eval" for l in lines)
    from safetensors.torch import load_file

    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    inst = pd.concat(pd.read_parquet(f) for f in rundir.instance_files(run))
    assert set(inst["site"]) == {"plant-a", "plant-b"}



@pytest.mark.parametrize("fresh", [True, False])
def test_eps_dpo_sites_start_each_round_from_the_averaged_beta_and_a_fresh_schedule(tmp_path, tiny_model_dir, fresh):
    """Round 2's first step at every site uses the beta the server averaged after round 1 (weighted by examples),
    and, with a fresh local optimizer (the default), the schedule's first learning rate again."""
    run = tmp_path / "fed"
    (run / "data").mkdir(parents=True)
    data_for("dpo", 8).to_parquet(run / "data" / "train.parquet")
    JobConfig(algorithm="eps_dpo", model=str(tiny_model_dir), batch_size=2, learning_rate=5e-3, max_length=64,
              max_prompt_length=32, epsilon=0.2, warmup_steps=0,
              federated=FederatedConfig(rounds=2, local_steps=3, fresh_local_optimizer=fresh)).save(run / "config.json")
    assert run_job(run) == 0, rundir.read_status(run)
    lines = rundir.read_metrics(run)[0]
    aggregated = [l["federated/beta"] for l in lines if "federated/beta" in l]
    assert len(aggregated) == 2
    site_lines = [l for l in lines if l.get("site") and l.get("split") == "train"]
    round2_first = [l for l in site_lines if l["round"] == 2 and l["step"] == 4]
    assert round2_first and all(l["kl/beta"] == pytest.approx(aggregated[0], abs=1e-12) for l in round2_first)
    lr1 = {l["site"]: l["learning_rate"] for l in site_lines if l["round"] == 1 and l["step"] == 1}
    lr2 = {l["site"]: l["learning_rate"] for l in round2_first}
    assert (lr1 == lr2) == fresh      # linear decay restarts each round only with a fresh local optimizer
