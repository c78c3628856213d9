"""GPU self-check: `python -m bench.gpu [--model DIR]...`, one JSON object on stdout, a table on stderr.

Runs a short SFT, DPO and KTO job (LoRA, the standard HH workload of bench/training.py) on SmolLM2 (when
converted, under PREFLAB_HOME) and on each model folder given with --model, on the GPU in bf16, and reports per job:
- tokens/s: prompt and response tokens the model processed per second of training steps (packed: a shared
  prompt counts once), after the reference log-probs are cached;
- MFU: 6 x parameters x tokens/s over the GPU's peak dense bf16 FLOP/s (the table below, or --peak-tflops). 6 N is
  the usual full-training count; LoRA skips the frozen weights' gradients (about 4 N), so this is an upper figure;
- peak memory: torch.cuda.max_memory_allocated over the whole job (loading, reference caching, steps), next to
  pre-flight's estimate for the same settings (app/preflight.py);
- the first --check-steps losses against the same job in fp32 on the CPU (a child process with no GPU visible),
  equal within bf16's tolerance. Models over --cpu-check-max-params parameters and 4-bit runs skip this check.
Without CUDA it says so and exits 0 with nothing measured; `--allow-cpu` runs the whole path on the CPU (tests).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.hh import HH, hh_pairs
from bench.training import (_fresh_accelerate_state, default_model, fitting, interleaved_unpaired, log, make_run_dir,
                            sequential_trainer)
from training.config import JobConfig, LoraConfig

# Peak dense bf16 tensor FLOP/s in TFLOP/s (vendor data sheets, without sparsity); the first name contained in
# torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
                    ("A10", 125.0), ("RTX 4090", 165.0)]
LOSS_RTOL = 2e-2      # bf16 keeps 8 bits of mantissa: a loss agrees with fp32 to about 1%


def peak_tflops(name: str) -> float | None:
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def workload(args, algorithm: str, tokenizer):
    """The HH rows for `algorithm`: pairs for DPO, their chosen answers for SFT, good/bad rows for KTO."""
    pairs = fitting(hh_pairs(args.data), tokenizer, args.max_prompt_length, args.pairs)
    if algorithm == "sft":
        return pairs.rename(columns={"chosen": "completion"}).drop(columns="rejected")
    return interleaved_unpaired(pairs) if algorithm == "kto" else pairs


def job_config(args, model: Path, algorithm: str, precision: str) -> JobConfig:
    return JobConfig(algorithm=algorithm, model=str(model), lora=LoraConfig(r=8, alpha=16), batch_size=args.batch_size,
                     max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                     learning_rate=args.learning_rate, max_steps=args.steps, seed=args.seed, checkpoint_every=0,
                     precision=precision, quantization=args.quantization,
                     gradient_checkpointing=args.gradient_checkpointing)


def run_job(args, model: Path, algorithm: str, precision: str, work: Path) -> dict:
    """Train `args.steps` steps in this process; losses, step time, tokens processed and peak memory."""
    from training.modeling import load_tokenizer

    _fresh_accelerate_state()
    cfg = job_config(args, model, algorithm, precision)
    rows = workload(args, algorithm, load_tokenizer(model))
    run = make_run_dir(work, f"{model.name}-{algorithm}-{precision}", cfg, rows)
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    tr = sequential_trainer(cfg, run).prepare()
    losses, t_steps = [], 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(tr.train_step()[0]["loss"])
        if gpu:
            torch.cuda.synchronize()
        t_steps += time.perf_counter() - t0
    tokens = 0
    for i in range(args.steps * cfg.grad_accum):
        exs = tr.micro_batch(i)
        tokens += sum(len(ex.prompt) + sum(len(r) for r in ex.responses) for ex in exs)
    out = {"losses": losses, "step_s": t_steps / args.steps, "tokens_per_s": tokens / t_steps}
    if gpu:
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    del tr
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def cpu_losses(args, model: Path, work: Path) -> dict[str, list[float]]:
    """The first losses of the same jobs in fp32 on the CPU, in one child process that sees no GPU."""
    cmd = [sys.executable, "-m", "bench.gpu", "--_cpu-child", "--algorithms", *args.algorithms, "--model", str(model),
           "--data", str(args.data),
           "--steps", str(args.check_steps), "--pairs", str(args.pairs), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_prompt_length),
           "--learning-rate", str(args.learning_rate), "--seed", str(args.seed), "--work", str(work)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"the CPU run failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_model(args, model: Path, work: Path) -> dict:
    from app.preflight import estimate_memory_gb
    from training.modeling import plan_model

    plan = plan_model(model, LoraConfig(r=8, alpha=16))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or peak_tflops(device)
    result = {"model": str(model), "parameters": plan.params, "device": device, "peak_tflops": peak, "jobs": {}}
    checked = plan.params <= args.cpu_check_max_params and args.quantization == "none"   # 4-bit changes the losses
    cpu = cpu_losses(args, model, work) if checked else {}
    for algorithm in args.algorithms:
        log(f"{model.name}: {algorithm}")
        r = run_job(args, model, algorithm, "auto", work)
        r["mfu"] = 6 * plan.params * r["tokens_per_s"] / (peak * 1e12) if peak else None
        r["memory_estimate_gb"] = estimate_memory_gb(job_config(args, model, algorithm, "auto"), plan)
        if checked:
            r["cpu_losses"] = cpu[algorithm]
            pairs = zip(r["losses"], cpu[algorithm])
            r["matches_cpu"] = all(abs(a - b) <= LOSS_RTOL * max(1.0, abs(b)) for a, b in pairs)
        result["jobs"][algorithm] = r
    return result


def table(results: list[dict]) -> str:
    rows = ["model | job | tokens/s | MFU | peak GB | estimate GB | first loss GPU / CPU | matches CPU",
            "---|---|---|---|---|---|---|---"]
    for m in results:
        for alg, r in m["jobs"].items():
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            peak = f"{r['peak_memory_gb']:.2f}" if "peak_memory_gb" in r else "-"
            cpu = f"{r['cpu_losses'][0]:.4f}" if r.get("cpu_losses") else "-"
            rows.append(f"{Path(m['model']).name} | {alg} | {r['tokens_per_s']:,.0f} | {mfu} | {peak} | "
                        f"{r['memory_estimate_gb']:.1f} | {r['losses'][0]:.4f} / {cpu} | {r.get('matches_cpu', '-')}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="a model folder to check besides SmolLM2 (repeat for several)")
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--algorithms", nargs="+", default=["sft", "dpo", "kto"], choices=["sft", "dpo", "kto"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--check-steps", type=int, default=2, help="losses compared with the CPU run")
    ap.add_argument("--cpu-check-max-params", type=float, default=2e9)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=192)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantization", choices=["none", "4bit"], default="none")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (tests)")
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_cpu-child", dest="cpu_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu and not args.cpu_child:
        print("No CUDA GPU is visible to torch on this machine, so nothing was measured.")
        return 0
    smollm2 = default_model()
    models = ([smollm2] if (smollm2 / "config.json").exists() else []) + args.model
    missing = [str(m) for m in args.model if not (m / "config.json").exists()]
    if missing or not models:
        print(json.dumps({"error": f"No model at {', '.join(missing) or smollm2}. Run ./run.sh once (it converts "
                                   "SmolLM2) or pass --model."}))
        return 2
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="preflab-gpu-") as tmp:
        work = Path(tempfile.mkdtemp(dir=args.work)) if args.work else Path(tmp)
        if args.cpu_child:
            args.quantization, args.gradient_checkpointing = "none", False
            print(json.dumps({a: run_job(args, args.model[0], a, "fp32", work)["losses"] for a in args.algorithms}))
            return 0
        results = [check_model(args, m, work) for m in models]
    log("\n" + table(results))
    print(json.dumps({"torch": torch.__version__, "results": results}))
    return 0 if all(r.get("matches_cpu", True) for m in results for r in m["jobs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
