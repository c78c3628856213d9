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


def test_fedadam_first_step():
    g = {"w": T(1.0)}
    opt = ServerOptimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    out = aggregate("fedadam", g, [{"w": T(3.0)}], [1], opt)
    # d = 2; m = 0.1*2 = 0.2; v = 0.01*4 = 0.04; w = 1 + 0.1*0.2/(0.2 + 0.001)
    assert out["w"].item() == pytest.approx(1 + 0.1 * 0.2 / (0.2 + 0.001))


def test_fedyogi_second_step():
    opt = ServerOptimizer("fedyogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w1 = aggregate("fedyogi", {"w": T(1.0)}, [{"w": T(3.0)}], [1], opt)["w"]
    # step 1: d=2, m=0.2, v = 0 - 0.01*4*sign(0-4) = 0.04
    assert w1.item() == pytest.approx(1 + 0.1 * 0.2 / (0.2 + 0.001))
    w2 = aggregate("fedyogi", {"w": w1}, [{"w": w1 + 1}], [1], opt)["w"]
    # step 2: d=1, m = 0.9*0.2 + 0.1*1 = 0.28, v = 0.04 - 0.01*1*sign(0.04 - 1) = 0.05
    assert w2.item() == pytest.approx(w1.item() + 0.1 * 0.28 / (0.05 ** 0.5 + 0.001))


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

