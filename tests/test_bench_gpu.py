"""The GPU self-check cannot rot on machines without a GPU: without CUDA it says so and measures nothing, and its
whole path (jobs, token counts, the memory estimate, the CPU loss check in a child process) runs on the CPU."""
import json

import pytest
import torch

from bench import gpu
from bench.hh import HH

pytestmark = pytest.mark.bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_so_and_measures_nothing(capsys):
    assert gpu.main([]) == 0
    said = capsys.readouterr().out.strip()
    assert said == "No CUDA GPU is visible to torch on this machine, so nothing was measured."


def test_the_whole_check_runs_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFLAB_HOME", str(tmp_path / "no-home"))     # no SmolLM2 here: the tiny model alone
    rc = gpu.main(["--allow-cpu", "--model", str(tiny_model_dir), "--data", str(HH), "--steps", "2", "--pairs", "8",
                   "--max-length", "96", "--max-prompt-length", "64", "--learning-rate", "1e-2",
                   "--work", str(tmp_path)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    (result,) = out["results"]
    assert set(result["jobs"]) == {"sft", "dpo", "kto"}
    for job in result["jobs"].values():
        assert len(job["losses"]) == 2 and job["tokens_per_s"] > 0 and job["memory_estimate_gb"] > 0
        assert job["matches_cpu"] and job["cpu_losses"] == pytest.approx(job["losses"], abs=1e-5)


def test_mfu_uses_the_gpus_peak():
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0 and gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H200") == 989.0 and gpu.peak_tflops("Some new GPU") is None
