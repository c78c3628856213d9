"""Federated training across machines with Flower's Deployment Engine: the coordinator runs a SuperLink, each site
a SuperNode beside its own Preflab. The apps wrap the same two steps as the one-machine simulation: `SiteClient.fit`
at each site (`site_round`, called by the ClientApp in app/flower_site.py, which reads the site's own labels) and
the round loop of rounds.py at the coordinator (`server_app`).

What crosses the wire: the global LoRA tensors and the job's settings (coordinator -> site); each site's new LoRA
tensors, its example count and its per-step training scalars (site -> coordinator). Rows, prompts, answers, example
ids and per-example values never leave the site.

Coordinator: a run directory holding config.json (a JobConfig with `federated`), then
    python -m training.federated.flower RUN_DIR --superlink HOST:PORT [--root-certificates ca.pem | --insecure]
Site (a SuperNode; keys of --node-config are read by app/flower_site.py's `site_rows` and by `_site`):
    flower-supernode --superlink HOST:PORT --node-config "site='plant-a' db='/srv/preflab/data/preflab.duckdb'"
docs/federated.md has the whole setup with TLS and node authentication.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from storage import rundir
from training.config import JobConfig
from training.runtime import JobError, Status, explain, heartbeat, seed_everything, site_dirname

ROOT = Path(__file__).resolve().parents[2]          # the Preflab folder: must be on PYTHONPATH of every Flower process
APP_DIR = Path(__file__).resolve().parent / "flower-app"

server_app = ServerApp()


# -- site ---------------------------------------------------------------------------------------------------------
_SITE: dict = {}   # run id -> SiteClient: the model loads once per process, however many rounds it serves


def _site(context: Context, cfg: JobConfig, read_rows: Callable[[dict, str], pd.DataFrame]):
    """This site's client for the run. Under the Deployment Engine every round may come in a fresh process, so
    the rows are frozen in the site's work folder on first use (later label edits do not change a running run)
    and the trainer resumes from its own checkpoint there (optimizer, schedule, data order)."""
    from training.federated import partition
    from training.federated.simulation import SiteClient

    if context.run_id not in _SITE:
        nc = context.node_config
        name = str(nc.get("site") or "")
        if not name:
            raise ValueError("This SuperNode has no site name: add site='NAME' to its --node-config.")
        source = Path(str(nc.get("db") or nc.get("data") or "."))
        work = Path(str(nc.get("workdir") or source.resolve().parent / "federated")) / f"flower-run-{context.run_id}"
        cfg = copy.deepcopy(cfg)
        cfg.model = str(nc.get("model") or cfg.model)   # the same base model, wherever this site keeps it
        frozen = work / "sites" / site_dirname(name) / rundir.TRAIN_DATA
        if frozen.exists():
            rows = pd.read_parquet(frozen)
        else:
            rows = read_rows(nc, cfg.data_kind)
            rows = partition.to_unpaired(rows) if cfg.data_kind == "unpaired" else rows
        _SITE.clear()
        _SITE[context.run_id] = SiteClient(name, rows, cfg, work)
    return _SITE[context.run_id]


def site_round(msg: Message, context: Context, read_rows: Callable[[dict, str], pd.DataFrame]) -> Message:
    """One round at a site: local_steps from the global adapter on the site's own rows, which
    `read_rows(node_config, data_kind)` gives (the site's ClientApp, app/flower_site.py, reads its database)."""
    cfg = JobConfig.from_dict(json.loads(str(msg.content["config"]["job"])))
    f = cfg.federated
    site = _site(context, cfg, read_rows)
    beta = msg.content["config"].get("beta")
    update, instances = site.fit(msg.content["lora"].to_torch_state_dict(), f.local_steps, f.proximal_mu,
                                 float(beta) if beta is not None else None)
    tr = site.trainer
    if instances:   # per-example values stay here, for the site's own charts
        rundir.write_instances(tr.run_dir, tr.step, instances)
    tr.save_checkpoint()
    reply = RecordDict({"lora": ArrayRecord.from_torch_state_dict(update.state),
                        "site": ConfigRecord({"name": site.name}),
                        "fit": MetricRecord({"num-examples": update.n_examples,
                                            **({"beta": update.beta} if update.beta is not None else {})})})
    for i, s in enumerate(update.scalars):
        reply[f"step-{i}"] = MetricRecord({k: float(v) for k, v in s.items()})
    return Message(reply, reply_to=msg)


# -- coordinator --------------------------------------------------------------------------------------------------
def initial_model(cfg: JobConfig):
    """The base model with the run's LoRA adapter, seeded exactly as a Trainer seeds it: the global start."""
    from training.modeling import add_lora, load_model

    seed_everything(cfg.seed)
    return add_lora(load_model(cfg.model), cfg.lora, cfg.adapter_init)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    run_federated_flower(grid, Path(str(rc["run-dir"])), int(rc["min-sites"]), float(rc["wait-for-sites-s"]),
                         float(rc["round-timeout-s"]))


def run_federated_flower(grid: Grid, run_dir: Path, min_sites: int = 2, wait_s: float = 600,
                         round_timeout_s: float = 3600) -> str:
    """The ServerApp: the same round loop as `run_federated` (rounds.py), its rounds sent to the SuperNodes, so
    the run directory reads the same on the Runs page (metrics with site and round, status with a heartbeat,
    adapter/ at the end)."""
    from training.federated.rounds import SiteUpdate, run_rounds

    status = Status(run_dir)
    status(state="running", pid=os.getpid(), error=None, phase="starting")
    stop_beat = heartbeat(status)
    try:
        cfg = JobConfig.load(run_dir / rundir.CONFIG)
        f = cfg.federated
        if cfg.kind != "train" or f is None:
            raise JobError("This run is not a federated training run: config.json needs a `federated` section.")
        if f.setting == "kto-r":
            raise JobError("KTO-R moves labels between sites, which cannot happen across machines (labels stay "
                           "at their site). Use the KTO-O setting.")
        model = initial_model(cfg)
        _wait_for_sites(grid, status, min_sites, wait_s)
        job = json.dumps(cfg.to_dict())

        def train_round(rnd: int, chosen: list[int], global_state: dict, beta: float) -> list[SiteUpdate]:
            content = RecordDict({"lora": ArrayRecord.from_torch_state_dict(global_state),
                                  "config": ConfigRecord({"job": job, "round": rnd, "beta": beta})})
            msgs = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN, group_id=str(rnd)) for n in chosen]
            replies = list(grid.send_and_receive(msgs, timeout=round_timeout_s))
            ok = [r for r in replies if not r.has_error()]
            failed = [f"site node {r.metadata.src_node_id}: {_reason(r)}" for r in replies if r.has_error()]
            if not ok:
                raise JobError(f"No site finished round {rnd}: {'; '.join(failed) or 'no answer before the timeout'}.")
            for line in failed:   # the round goes on without them; the coordinator's log says who and why
                print(f"round {rnd}: left out {line}", flush=True)
            return [SiteUpdate(str(r.content["site"]["name"]), r.content["lora"].to_torch_state_dict(),
                               float(r.content["fit"]["num-examples"]),
                               [dict(r.content[k]) for k in sorted((k for k in r.content if k.startswith("step-")),
                                                                   key=lambda k: int(k[5:]))],
                               float(r.content["fit"]["beta"]) if "beta" in r.content["fit"] else None)
                    for r in ok]

        return run_rounds(cfg, run_dir, model, grid.get_node_ids, train_round, status)
    except BaseException as e:  # noqa: BLE001 - every failure ends as a sentence in status.json
        status(state="failed", error=explain(e), phase="failed")
        raise
    finally:
        stop_beat()


def _reason(reply: Message) -> str:
    """A ClientApp's exception as its own sentence (Flower wraps it as "<class 'E'>:<'sentence'>")."""
    m = re.fullmatch(r"<class '[^']*'>:<'(.*)'>", reply.error.reason, re.S)
    return m.group(1) if m else reply.error.reason


def _wait_for_sites(grid: Grid, status, n: int, wait_s: float) -> None:
    deadline = time.time() + wait_s
    while (have := len(list(grid.get_node_ids()))) < n:
        if time.time() > deadline:
            raise JobError(f"Only {have} of {n} sites connected to the SuperLink within {wait_s:.0f} s.")
        status(phase=f"waiting for sites ({have} of {n} connected)")
        time.sleep(1)


# -- the coordinator's command --------------------------------------------------------------------------------------
def submit(run_dir: str | Path, superlink: str, root_certificates: str | None = None, insecure: bool = False,
           min_sites: int = 2, timeout_s: float | None = None) -> int:
    """Start the run on the SuperLink with `flwr run` and follow its log until it ends. `flwr` reads its
    connection from FLWR_HOME/config.toml; a private FLWR_HOME per call keeps it offline and leaves ~/.flwr
    alone. Returns 0 when the run finished (status.json says so), 1 otherwise."""
    import tomli_w

    run_dir = Path(run_dir).resolve()
    JobConfig.load(run_dir / rundir.CONFIG)     # a broken config is reported here, before anything starts
    conn = {"address": superlink}
    if insecure:
        conn["insecure"] = True
    elif root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    rundir.write_status(run_dir, state="queued", step=0, phase="submitted to the SuperLink", error=None)
    with tempfile.TemporaryDirectory(prefix="preflab-flwr-") as home:
        home = Path(home)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "preflab", "preflab": conn}}))
        (home / "run.toml").write_text(tomli_w.dumps({"run-dir": str(run_dir), "min-sites": min_sites}))
        env = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", **os.environ,  # offline by default
               "FLWR_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        flwr = Path(sys.executable).with_name("flwr")
        cmd = [str(flwr), "run", str(APP_DIR), "preflab", "--run-config", str(home / "run.toml"), "--stream"]
        code = subprocess.run(cmd, env=env, timeout=timeout_s, check=False).returncode
    st = rundir.read_status(run_dir) or {}
    if st.get("state") == "queued":   # the ServerApp never started
        st = rundir.write_status(run_dir, state="failed", error=f"The run never reached Preflab's ServerApp on the "
                                 f"SuperLink at {superlink} (flwr run exited with {code}; was the SuperLink started "
                                 "with PYTHONPATH set to the Preflab folder?). Flower's message is above.")
    print(f"run {run_dir.name}: {st.get('state')}" + (f" ({st['error']})" if st.get("error") else ""))
    return 0 if st.get("state") == "finished" else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m training.federated.flower",
                                description="Run a federated Preflab run on a Flower SuperLink.")
    p.add_argument("run_dir", help="run directory with config.json (a JobConfig with a `federated` section)")
    p.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address host:port")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    tls.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only)")
    p.add_argument("--min-sites", type=int, default=2, help="sites to wait for before round 1")
    a = p.parse_args()
    sys.exit(submit(a.run_dir, a.superlink, a.root_certificates, a.insecure, a.min_sites))
