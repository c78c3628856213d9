"""Data-parallel jobs: `torchrun --nproc_per_node 2 -m training RUN_DIR` on the CPU (gloo) trains exactly like one
process with grad_accum 2 on the same data, and only the main process writes the run directory."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from storage import rundir
from tests.jobdata import make_run, wait_until_training
from training.__main__ import run_job

ROOT = Path(__file__).resolve().parents[1]


def torchrun(run: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", str(run)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)


def train_lines(run: Path) -> list[dict]:
    return [r for r in rundir.read_metrics(run)[0] if r["split"] == "train"]


def instances(run: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(f) for f in rundir.instance_files(run))


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def one_and_two_processes(tmp_path, model_dir, algorithm, **settings) -> tuple[Path, Path]:
    one = make_run(tmp_path / "one", model_dir, algorithm, grad_accum=2, **settings)
    assert run_job(one) == 0
    two = make_run(tmp_path / "two", model_dir, algorithm, grad_accum=1, **settings)
    assert torchrun(two).wait(300) == 0
    return one, two


def test_two_processes_train_like_one_with_grad_accum_2(tmp_path, tiny_model_dir):
    one, two = one_and_two_processes(tmp_path, tiny_model_dir, "dpo", max_steps=4)
    status = rundir.read_status(two)
    assert status["state"] == "finished" and status["error"] is None and status["step"] == 4
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    lines = train_lines(two)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]   # one line per step, not one per process
    for r1, r2 in zip(train_lines(one), lines):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-6)
        assert r2["rewards/margins"] == pytest.approx(r1["rewards/margins"], abs=1e-6)
    # each step's rows come from both processes: the same examples the single process saw
    i1, i2 = instances(one), instances(two)
    for step in range(1, 5):
        assert sorted(i2[i2.step == step].example_id) == sorted(i1[i1.step == step].example_id)


def test_kto_two_processes_log_one_global_line_per_step(tmp_path, tiny_model_dir):
    one, two = one_and_two_processes(tmp_path, tiny_model_dir, "kto", max_steps=3)
    assert rundir.read_status(two)["state"] == "finished"
    lines = train_lines(two)
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all("kl" in r for r in lines)
    assert lines[0]["loss"] == pytest.approx(train_lines(one)[0]["loss"], abs=1e-6)   # z0 = 0 at step 1
    i1, i2 = instances(one), instances(two)
    assert sorted(i2.example_id) == sorted(i1.example_id)
    assert set(i2.side) == {"desirable", "undesirable"}


@pytest.mark.slow
def test_sigterm_stops_both_processes_with_one_checkpoint_and_resumes(tmp_path, tiny_model_dir):
    steps = 80
    run = make_run(tmp_path / "two", tiny_model_dir, "dpo", max_steps=steps)
    proc = torchrun(run, start_new_session=True)
    wait_until_training(run)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(120)
    st = rundir.read_status(run)
    assert st["state"] == "stopped" and st["step"] < steps
    checkpoints = list((run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == [f"step-{st['step']:07d}"]
    assert {p.name for p in checkpoints[0].glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                             "random_states_1.pkl"}
    assert torchrun(run).wait(300) == 0
    assert rundir.read_status(run)["state"] == "finished"
    assert [r["step"] for r in train_lines(run)] == list(range(1, steps + 1))   # no step lost or repeated
    one = make_run(tmp_path / "one", tiny_model_dir, "dpo", max_steps=steps, grad_accum=2)
    assert run_job(one) == 0
    for r1, r2 in zip(train_lines(one), train_lines(run)):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
