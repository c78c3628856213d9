"""Federated training across processes with Flower's Deployment Engine, on loopback: a real SuperLink and two
SuperNodes, each site with its own Preflab database, one round of KTO on the tiny model. The global adapter moves,
exactly as the in-process simulation moves it on the same rows; each database still holds only its own site's
labels, and the coordinator's run directory holds no rows."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import rundir
from storage.db import Database, open_db
from tests.conftest import ROOT
from tests.jobdata import BAD, GOOD, PROMPTS
from training.config import FederatedConfig, JobConfig

SITES = {"plant-a": [0, 2, 4, 6], "plant-b": [1, 3, 5, 7]}   # which PROMPTS each site labeled
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all bound at once, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _site_db(path: Path, site: str) -> None:
    from labeling import queue as Q

    db = open_db(path)
    for i in SITES[site]:
        for answer, value in ((GOOD[i], "good"), (BAD[i], "bad")):
            Q.save_annotation(db, Q.create_task(db, "single", PROMPTS[i], [answer], site=site), "nurse", value)
    db.close()


def _site_rows(path: Path):
    from labeling.dataset import training_rows

    db = Database(path, read_only=True)
    try:
        return training_rows(db, "unpaired")
    finally:
        db.close()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.slow
def test_superlink_and_two_supernodes_train_one_kto_round(tmp_path, tiny_model_dir):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from training.federated import flower

    # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name: the venv's bin first
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    link, *node_ports = _free_ports(1 + len(SITES))
    procs, logs = [], []

    def start(name: str, *args: str) -> None:
        (tmp_path / name).mkdir()
        log = open(tmp_path / name / "log.txt", "wb")
        logs.append(log)
        # own session: the Flower processes it starts (SuperExec, ServerApp, ClientApps) are killed with it
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], env={**env, "FLWR_HOME": str(tmp_path / name)},
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    for site in SITES:
        _site_db(tmp_path / site / "preflab.duckdb", site)
    run = tmp_path / "coordinator" / "run"
    run.mkdir(parents=True)
    cfg = JobConfig(algorithm="kto", model=str(tiny_model_dir), batch_size=2, learning_rate=5e-3, max_length=64,
                    max_prompt_length=32, federated=FederatedConfig(rounds=1, local_steps=2))
    cfg.save(run / rundir.CONFIG)
    try:
        start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
              "--port", str(link))
        _wait_port(link, procs[0])
        for site, port in zip(SITES, node_ports):
            db = tmp_path / site / "preflab.duckdb"
            start(f"node-{site}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--port", str(port), "--node-config", f"site='{site}' db='{db}'")
        t0 = time.time()
        code = flower.submit(run, f"127.0.0.1:{link}", insecure=True, timeout_s=240)
        print(f"federated round took {time.time() - t0:.1f} s")
        assert code == 0, rundir.read_status(run)
    except BaseException:
        for f in sorted(tmp_path.glob("*/log.txt")):
            print(f"--- {f.parent.name}\n{f.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):   # each process group: ours and the helpers Flower started
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        for log in logs:
            log.close()

    # the global adapter moved away from the seeded start
    saved = load_file(run / rundir.ADAPTER / "adapter_model.safetensors")
    start_state = get_peft_model_state_dict(flower.initial_model(cfg))
    assert saved.keys() == start_state.keys()
    assert any(not v.equal(start_state[k]) for k, v in saved.items())
    # ... to where the one-machine simulation takes it on the same rows: the same client and aggregation steps
    import pandas as pd

    from training.__main__ import run_job

    sim = tmp_path / "simulation"
    (sim / rundir.DATA).mkdir(parents=True)
    pd.concat([_site_rows(tmp_path / s / "preflab.duckdb") for s in SITES]).to_parquet(sim / rundir.TRAIN_DATA)
    cfg.save(sim / rundir.CONFIG)
    assert run_job(sim) == 0, rundir.read_status(sim)
    simulated = load_file(sim / rundir.ADAPTER / "adapter_model.safetensors")
    assert all(v.allclose(simulated[k], atol=1e-6) for k, v in saved.items())
    lines = rundir.read_metrics(run)[0]
    assert {l["site"] for l in lines if l.get("site")} == set(SITES)
    assert [l["federated/sites"] for l in lines if "federated/sites" in l] == [2]

    # every site's database still holds exactly its own labels; its frozen rows stay in its own folder
    texts = {site: {t for i in idx for t in (PROMPTS[i], GOOD[i], BAD[i]) if len(t) >= 10}  # long: no chance hits
             for site, idx in SITES.items()}
    for site, idx in SITES.items():
        rows = _site_rows(tmp_path / site / "preflab.duckdb")
        assert len(rows) == 2 * len(idx) and set(rows["site"]) == {site}
        assert set(rows["prompt"]) == {PROMPTS[i] for i in idx}
        other = set().union(*(t for s, t in texts.items() if s != site))
        for f in (tmp_path / site / "federated").rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(t.encode() in data for t in other), f"{f} holds another site's text"

    # the coordinator saw adapters and metrics only: no row, prompt or answer anywhere in its run directory
    assert not list(run.rglob("*.parquet")) and not (run / rundir.DATA).exists()
    everything = set().union(*texts.values())
    for f in run.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(t.encode() in data for t in everything), f"{f} holds labeled text"
