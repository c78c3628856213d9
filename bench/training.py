"""Training benchmarks: `python -m bench.training [--vs-trl] [--profile] [--memory] [--quality]`, one JSON object on stdout.

The standard workload (issue: "Training core"): SmolLM2-135M + LoRA r=8 on the first 256 HH-RLHF pairs, batch 4,
max length 256. HH prompts are whole dialogues, often longer than the limit; pairs whose chat-templated prompt
does not fit in `max_prompt_length` tokens are passed over (TRL drops them too), so both trainers see the same
token ids: prompt + (response + EOS), cut at `max_length`.

- default: our steps/s and response tokens/s for SFT, DPO and KTO (references computed lazily, inside the steps).
- `--vs-trl`: ours and TRL's DPOTrainer / KTOTrainer, each in its own fresh process as a user runs it, on the
  identical batches (same order, same seeded LoRA start, same optimizer settings), for each LoRA target set of
  `--targets` (all-linear, the job's default, and attention q, k, v, o). Per trainer: import, load (model, data),
  first step, the rest, and the whole process from launch to exit; the step-rate ratio (ours / TRL's steps/s over
  the training loop, our lazy references and TRL's per-step reference forward both inside it) and the
  whole-process ratio (TRL's seconds / ours); the losses side by side.
- `--profile`: where a step's time goes: phases (references, policy forward and loss, backward, KTO's mismatched
  pairs, optimizer) of `--steps` steps on new batches, and the last step's top operators (torch.profiler).
- `--memory`: peak memory of a DPO step against an SFT step on the same batch (the chosen answers), each in a
  fresh process; on CPU the process's peak resident set growth (VmHWM reset after loading), on GPU
  torch.cuda.max_memory_allocated.
- `--quality`: DPO and KTO trained on the first `--quality-train` pairs, held-out preference accuracy on the
  rest, before and after (implicit reward and per-token likelihood).
Figures on a shared machine are noisy: compare ratios taken in one run, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.hh import HH, hh_pairs
from storage import rundir
from training.config import JobConfig, LoraConfig

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- workload ---------------------------------------------------------------------------------------------------------
def fitting(df: pd.DataFrame, tokenizer, max_prompt_length: int, n: int | None) -> pd.DataFrame:
    """The first n pairs whose templated prompt fits (so truncation is the same in both trainers)."""
    from training.data import encode_prompt

    keep = []
    for i, p in enumerate(df["prompt"]):
        if len(encode_prompt(tokenizer, p)) <= max_prompt_length:
            keep.append(i)
            if n is not None and len(keep) == n:
                break
    return df.iloc[keep].reset_index(drop=True)


def interleaved_unpaired(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs as KTO rows, good and bad alternating, so every sequential batch holds both classes."""
    rows = []
    for r in df.itertuples(index=False):
        rows.append({"prompt": r.prompt, "completion": r.chosen, "label": True, "example_id": f"{r.example_id}:c"})
        rows.append({"prompt": r.prompt, "completion": r.rejected, "label": False, "example_id": f"{r.example_id}:r"})
    return pd.DataFrame(rows)


def make_run_dir(root: Path, name: str, cfg: JobConfig, train: pd.DataFrame, eval_df: pd.DataFrame | None = None) -> Path:
    d = root / name
    (d / rundir.DATA).mkdir(parents=True, exist_ok=True)
    train.to_parquet(d / rundir.TRAIN_DATA, index=False)
    if eval_df is not None:
        eval_df.to_parquet(d / rundir.EVAL_DATA, index=False)
    cfg.save(d / "config.json")
    return d


def base_config(args, algorithm: str, **over) -> JobConfig:
    settings = dict(algorithm=algorithm, model=str(args.model), lora=lora(args),
                    batch_size=args.batch_size, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                    learning_rate=args.learning_rate, max_steps=args.steps, seed=args.seed, checkpoint_every=0,
                    precision=args.precision)
    return JobConfig(**{**settings, **over})


def sequential_trainer(cfg: JobConfig, run_dir: Path):
    """Our Trainer, fed batches in file order (TRL's sequential sampler), not its length-grouped shuffle."""
    from training.trainer import Trainer

    class Sequential(Trainer):
        def micro_batch(self, index: int):
            n, b = len(self.examples), self.cfg.batch_size
            start = (index * b) % (n - n % b or n)
            return self.examples[start:start + b]

    return Sequential(cfg, run_dir)


# -- our trainer ------------------------------------------------------------------------------------------------------
def _fresh_accelerate_state() -> None:
    """Each trainer sets up accelerate its own way; one process runs both."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def run_ours(cfg: JobConfig, run_dir: Path, steps: int, sequential: bool = True) -> dict:
    from training.trainer import Trainer

    _fresh_accelerate_state()
    torch.manual_seed(cfg.seed)
    tr = sequential_trainer(cfg, run_dir) if sequential else Trainer(cfg, run_dir)
    t0 = time.perf_counter()
    tr.prepare()                     # loads the model and tokenizes; references come with each batch's first use
    t_prepare = time.perf_counter() - t0
    losses, logs, tokens = [], [], 0
    t1 = time.perf_counter()
    for _ in range(steps):
        s, inst = tr.train_step()
        losses.append(s["loss"])
        logs.append(s)
    t_steps = time.perf_counter() - t1
    for i in range(steps * cfg.grad_accum):
        tokens += sum(len(r) for ex in tr.micro_batch(i) for r in ex.responses)
    return {"losses": losses, "logs": logs, "steps": steps, "loop_s": t_steps, "prepare_s": t_prepare,
            "steps_per_s": steps / t_steps, "response_tokens_per_s": tokens / t_steps, "trainer": tr}


# -- TRL ----------------------------------------------------------------------------------------------------------------
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGETS = {"all-linear": "all-linear", "attention": ATTENTION}


def lora(args) -> LoraConfig:
    """LoRA r=8 on `args.targets` (the job's default, all-linear, for callers without that option)."""
    return LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=TARGETS[getattr(args, "targets", "all-linear")])


def trl_trainer(kind: str, args, rows: pd.DataFrame, out_dir: Path, on_step):
    """TRL's trainer on the same rows from the same LoRA start (seeded as our trainer seeds it): the prompt given as
    already chat-templated text (TRL adds the EOS). on_step(logs) is called at every step's log."""
    import datasets
    from transformers import TrainerCallback

    from training.data import encode_prompt
    from training.modeling import add_lora, load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    text = {p: tok.decode(encode_prompt(tok, p)) for p in rows["prompt"].unique()}
    torch.manual_seed(args.seed)
    model = add_lora(load_model(args.model), lora(args))
    common = dict(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                  learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=args.seed, max_length=args.max_length,
                  beta=0.1, train_sampling_strategy="sequential", dataloader_num_workers=0, remove_unused_columns=False,
                  bf16=args.precision == "bf16",   # TRL's default is bf16 autocast, even on a CPU: match ours
                  gradient_checkpointing=args.trl_gradient_checkpointing)

    class Keep(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                on_step(dict(logs))

    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        ds = datasets.Dataset.from_dict({"prompt": [text[p] for p in rows["prompt"]],
                                         "chosen": list(rows["chosen"]), "rejected": list(rows["rejected"])})
        return DPOTrainer(model=model, args=DPOConfig(**common, loss_type=["sigmoid"]), train_dataset=ds,
                          processing_class=tok, callbacks=[Keep()])
    from trl import KTOConfig, KTOTrainer

    ds = datasets.Dataset.from_dict({"prompt": [text[p] for p in rows["prompt"]],
                                     "completion": list(rows["completion"]), "label": list(rows["label"])})
    return KTOTrainer(model=model, args=KTOConfig(**common, desirable_weight=1.0, undesirable_weight=1.0),
                      train_dataset=ds, processing_class=tok, callbacks=[Keep()])


def token_ids(kind: str, rows, n: int) -> list[list[list[int]]]:
    """Each of the first n examples' sequences as prompt + response ids, from our Example or TRL's dataset row."""
    out = []
    for i in range(n):
        r = rows[i]
        if isinstance(r, dict):
            names = ("chosen_ids", "rejected_ids") if kind == "dpo" else ("completion_ids",)
            out.append([list(r["prompt_ids"]) + list(r[c]) for c in names])
        else:
            out.append([list(r.prompt) + list(resp) for resp in r.responses])
    return out


def same_tokens(ours: list, trl: list) -> bool:
    """Do both trainers see the same token ids? (TRL may keep ids past max_length that its collator cuts.)"""
    return len(ours) == len(trl) and all(len(a) == len(b) and all(list(x) == list(y)[:len(x)] for x, y in zip(a, b))
                                         for a, b in zip(ours, trl))


# -- one whole process ------------------------------------------------------------------------------------------------
def whole_process_child(who: str, kind: str, args, work: Path, launched: float) -> dict:
    """One trainer as a user meets it, in a fresh process: imports, loading (model, data), the first step, the
    rest. Times from `launched` (the parent's clock when it started this process)."""
    t = {"import_s": time.time() - launched}      # the interpreter, torch and this module
    if who == "ours":
        import training.trainer  # noqa: F401
    else:
        import trl  # noqa: F401
    t["import_s"] = time.time() - launched
    from training.modeling import load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = fitting(hh_pairs(args.data), tok, args.max_prompt_length, args.pairs)
    rows = pairs if kind == "dpo" else interleaved_unpaired(pairs)
    steps: list[tuple[float, float]] = []          # (wall clock, loss) at each step's log
    t0 = time.time()
    if who == "ours":
        cfg = base_config(args, kind)
        run = make_run_dir(work, f"ours-{kind}-{args.targets}", cfg, rows)
        tr = sequential_trainer(cfg, run).prepare()
        t_loaded = time.time()
        state = tr.train()                          # the job's own loop: metrics, instances, the adapter at the end
        assert state == "finished", state
        lines = [r for r in rundir.read_metrics(run)[0] if r.get("split") == "train"]
        steps = [(r["time"], r["loss"]) for r in lines]
        ids = token_ids(kind, tr.examples, min(len(rows), 64))
        extra = {"reference_forwards": tr.ref_forwards}
    else:
        logs: list[dict] = []
        trainer = trl_trainer(kind, args, rows, work / f"trl-{kind}-{args.targets}",
                              lambda d: (logs.append(d), steps.append((time.time(), d["loss"]))))
        t_loaded = time.time()
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):      # the HF Trainer prints its log dicts
            trainer.train()
        ids = token_ids(kind, trainer.train_dataset, min(len(rows), 64))
        extra = {}
    t_end = time.time()
    t.update(load_s=t_loaded - t0, first_step_s=steps[0][0] - t_loaded, rest_s=steps[-1][0] - steps[0][0],
             loop_s=t_end - t_loaded, first_point_s=steps[0][0] - launched)
    return {**{k: round(v, 2) for k, v in t.items()}, "steps": len(steps), "steps_per_s": len(steps) / t["loop_s"],
            "losses": [loss for _, loss in steps], "token_ids": ids, **extra}


def whole_process(who: str, kind: str, args, work: Path) -> dict:
    """Run `whole_process_child` in a fresh interpreter and time it from launch to exit."""
    cmd = [sys.executable, "-m", "bench.training", "--_whole-child", who, kind, "--model", str(args.model),
           "--data", str(args.data), "--pairs", str(args.pairs), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--max-prompt-length", str(args.max_prompt_length), "--learning-rate", str(args.learning_rate),
           "--seed", str(args.seed), "--precision", args.precision, "--targets", args.targets,
           "--threads", str(args.threads), "--work", str(work)]
    if args.trl_gradient_checkpointing:
        cmd.append("--trl-gradient-checkpointing")
    launched = time.time()
    proc = subprocess.run(cmd + ["--_launched", repr(launched)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - launched
    if proc.returncode != 0:
        raise RuntimeError(f"{who} {kind}: {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["whole_s"] = round(wall, 2)
    log(f"{who} {kind} {args.targets}: " + json.dumps({k: v for k, v in out.items() if k not in ("token_ids", "losses")}))
    return out


def vs_trl(args, work: Path) -> dict:
    """Ours and TRL's, each in its own fresh process, on every LoRA target set and algorithm asked for."""
    from training.modeling import load_tokenizer

    pairs = fitting(hh_pairs(args.data), load_tokenizer(args.model), args.max_prompt_length, args.pairs)
    out = {"workload": {"pairs": len(pairs), "batch_size": args.batch_size, "max_length": args.max_length,
                        "max_prompt_length": args.max_prompt_length, "steps": args.steps, "lora_r": 8,
                        "precision": args.precision, "trl_gradient_checkpointing": args.trl_gradient_checkpointing}}
    runs = [(targets, kind, who) for targets in args.targets_list for kind in args.algorithms for who in ("ours", "trl")]
    if args.parallel:      # all at once: on a machine others load too, each trainer meets the same load
        from concurrent.futures import ThreadPoolExecutor

        def one(run):
            return whole_process(run[2], run[1], argparse.Namespace(**{**vars(args), "targets": run[0]}), work)

        with ThreadPoolExecutor(len(runs)) as pool:
            done = dict(zip(runs, pool.map(one, runs)))
    else:
        done = {}
        for run in runs:
            args.targets = run[0]
            done[run] = whole_process(run[2], run[1], args, work)
    for targets in args.targets_list:
        out[targets] = {}
        for kind in args.algorithms:
            ours, trl = done[(targets, kind, "ours")], done[(targets, kind, "trl")]
            r = {"step_rate_ratio": round(ours["steps_per_s"] / trl["steps_per_s"], 3),
                 "whole_process_ratio": round(trl["whole_s"] / ours["whole_s"], 3)}
            log(f"{targets} {kind}: ours {ours['whole_s']} s, TRL {trl['whole_s']} s whole; {r}")
            lo, lt = ours.pop("losses"), trl.pop("losses")
            same = same_tokens(ours.pop("token_ids"), trl.pop("token_ids"))
            out[targets][kind] = {
                **r, "ours": ours, "trl": trl, "same_token_ids": same,
                "loss_ours": [round(x, 6) for x in lo], "loss_trl": [round(x, 6) for x in lt],
                "step1_loss_equal": bool(lt) and abs(lo[0] - lt[0]) < 1e-4,
                "max_loss_difference": round(max(abs(a - b) for a, b in zip(lo, lt)), 6),
            }
    return out


# -- speed of our own trainer ---------------------------------------------------------------------------------------------
def speed(args, work: Path) -> dict:
    from training.modeling import load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = fitting(hh_pairs(args.data), tok, args.max_prompt_length, args.pairs)
    out = {}
    for kind in args.algorithms + ["sft"]:
        rows = {"dpo": pairs, "kto": interleaved_unpaired(pairs)}.get(kind)
        if rows is None:
            rows = pairs.rename(columns={"chosen": "completion"}).drop(columns="rejected")
        cfg = base_config(args, kind)
        r = run_ours(cfg, make_run_dir(work, f"speed-{kind}", cfg, rows), args.steps, sequential=False)
        out[kind] = {"steps_per_s": round(r["steps_per_s"], 4), "response_tokens_per_s": round(r["response_tokens_per_s"], 1),
                     "prepare_s": round(r["prepare_s"], 2)}
        log(f"{kind}: {out[kind]}")
    return out


# -- one step, profiled ---------------------------------------------------------------------------------------------------
def profile(args, work: Path) -> dict:
    """Where one step's time goes: a warm-up step, then `--steps` steps on new batches (so each computes its
    references lazily, as in a run's first epoch), timed by phase, and the top operators of the last by self CPU time
    (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from training.modeling import load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = fitting(hh_pairs(args.data), tok, args.max_prompt_length, args.pairs)
    out = {}
    for kind in args.algorithms:
        rows = pairs if kind == "dpo" else interleaved_unpaired(pairs)
        cfg = base_config(args, kind, max_steps=args.steps + 1)
        _fresh_accelerate_state()
        tr = sequential_trainer(cfg, make_run_dir(work, f"profile-{kind}", cfg, rows)).prepare()
        tr.train_step()
        phases = {"references (no grad)": 0.0, "policy backward": 0.0, "KL pairs, policy (no grad)": 0.0,
                  "optimizer": 0.0}

        busy = []           # the reference pass calls tr.logps too: only the outermost timed call counts

        def timed(name, f):
            def g(*a, **k):
                t0, outer = time.perf_counter(), not busy
                busy.append(name)
                try:
                    return f(*a, **k)
                finally:
                    busy.pop()
                    if outer:
                        phases[name] += time.perf_counter() - t0
            return g

        tr.ensure_references = timed("references (no grad)", tr.ensure_references)
        tr.accelerator.backward = timed("policy backward", tr.accelerator.backward)
        tr.logps = timed("KL pairs, policy (no grad)", tr.logps)      # the policy's own forward goes to tr.policy
        tr.optimizer.step = timed("optimizer", tr.optimizer.step)
        total = 0.0
        for i in range(args.steps):
            t0 = time.perf_counter()
            if i == args.steps - 1:
                with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                    tr.train_step()
            else:
                tr.train_step()
            total += time.perf_counter() - t0
        phases["policy forward and loss"] = total - sum(phases.values())
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        op_total = sum(e.self_cpu_time_total for e in prof.key_averages())
        out[kind] = {"steps": args.steps, "step_s": round(total / args.steps, 2),
                     "phases_share": {k: round(v / total, 3) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
                     "top_ops_share": {e.key: round(e.self_cpu_time_total / op_total, 3) for e in ops}}
        log(f"profile {kind}: {out[kind]}")
    return out


# -- memory -------------------------------------------------------------------------------------------------------------
def memory(args, work: Path) -> dict:
    """Each measurement in a fresh process so one does not inherit the other's allocator peaks."""
    out = {}
    for kind in ("sft", "dpo"):
        cmd = [sys.executable, "-m", "bench.training", "--_memory-child", kind, "--model", str(args.model),
               "--precision", args.precision,
               "--data", str(args.data), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--max-prompt-length", str(args.max_prompt_length), "--work", str(work)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"memory {kind}: {out[kind]}")
    out["dpo_over_sft_peak"] = round(out["dpo"]["peak_mb"] / out["sft"]["peak_mb"], 3)
    out["dpo_over_sft_step_growth"] = round(out["dpo"]["step_growth_mb"] / max(out["sft"]["step_growth_mb"], 1e-9), 3)
    return out


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(kind: str, args, work: Path) -> dict:
    """Peak memory of 3 training steps on the standard workload's first batch (SFT trains on its chosen answers)."""
    from training.modeling import load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = fitting(hh_pairs(args.data), tok, args.max_prompt_length, args.batch_size)
    rows = pairs if kind == "dpo" else pairs.rename(columns={"chosen": "completion"}).drop(columns="rejected")
    args.steps = 3
    cfg = base_config(args, kind)
    tr = sequential_trainer(cfg, make_run_dir(work, f"mem-{kind}", cfg, rows)).prepare()
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM (peak RSS) to the current RSS
        base = _rss_mb("VmRSS")
    for _ in range(3):
        tr.train_step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _rss_mb("VmHWM")
    tokens = int(sum(len(ex.prompt) + sum(len(r) for r in ex.responses) for ex in tr.examples))  # packed
    return {"device": "cuda" if gpu else "cpu", "peak_mb": round(peak, 1), "before_step_mb": round(base, 1),
            "step_growth_mb": round(peak - base, 1), "sequences": sum(len(ex.responses) for ex in tr.examples),
            "tokens": tokens}


# -- quality ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def held_out_logps(tr, examples) -> torch.Tensor:
    """Summed response log-probs [2, n] (chosen, rejected) of held-out pairs under `tr`'s policy, in the trainer's
    own packed layout and precision (bf16 autocast makes this several times faster than a plain fp32 pass)."""
    from training.data import make_batch

    chosen, rejected = [], []
    for s in range(0, len(examples), 8):
        exs = examples[s:s + 8]
        b = make_batch(exs, "pairs", tr.tokenizer.pad_token_id)
        with tr.accelerator.autocast():
            lp = tr.logps(tr.model, b.parts).logps.float().cpu()
        chosen.append(lp[:len(exs)]), rejected.append(lp[len(exs):])
    return torch.stack([torch.cat(chosen), torch.cat(rejected)])


def n_response_tokens(examples) -> torch.Tensor:
    return torch.tensor([[len(ex.responses[0]) for ex in examples], [len(ex.responses[1]) for ex in examples]]).clamp(min=1)


def pair_accuracy(policy: torch.Tensor, base: torch.Tensor, n_tokens: torch.Tensor) -> dict:
    """Held-out preference accuracy from [2, n] log-probs: by implicit reward (policy - base, ties count half;
    exactly 0.5 for the base model itself) and by the policy's own per-token likelihood (meaningful for the base
    model too), plus mean m_theta."""
    r = policy - base
    wins = (r[0] > r[1]).float() + 0.5 * (r[0] == r[1]).float()
    per_token = policy / n_tokens
    return {"reward_accuracy": round(float(wins.mean()), 4),
            "likelihood_accuracy": round(float((per_token[0] > per_token[1]).float().mean()), 4),
            "mean_m_theta": round(float((r / n_tokens).mean()), 5)}


def quality(args, work: Path) -> dict:
    from training.data import tokenize
    from training.modeling import load_tokenizer
    from training.trainer import Trainer

    tok = load_tokenizer(args.model)
    allp = hh_pairs(args.data)
    train, held = allp.iloc[:args.quality_train], allp.iloc[args.quality_train:]
    if args.quality_held_out:
        held = held.head(args.quality_held_out)
    held_ex = tokenize(held.reset_index(drop=True), tok, "pairs", args.max_length, args.max_prompt_length)
    n_tokens = n_response_tokens(held_ex)
    out = {"train_pairs": len(train), "held_out_pairs": len(held_ex), "precision": args.precision}
    base = None
    for kind in args.algorithms:
        rows = train if kind == "dpo" else interleaved_unpaired(train)
        cfg = base_config(args, kind, max_steps=args.quality_steps)
        cfg.learning_rate = args.quality_lr
        tr = Trainer(cfg, make_run_dir(work, f"quality-{kind}", cfg, rows))
        t0 = time.perf_counter()
        tr.prepare()
        if base is None:
            t_eval = time.perf_counter()
            base = held_out_logps(tr, held_ex)
            out["base"] = {**pair_accuracy(base, base, n_tokens), "eval_s": round(time.perf_counter() - t_eval, 1)}
            log(f"base: {out['base']}")
            t0 += time.perf_counter() - t_eval
        last = None
        for step in range(1, tr.total_steps + 1):
            s, _ = tr.train_step()
            last = s
            if step % 25 == 0:
                log(f"{kind} step {step}/{tr.total_steps} loss {s['loss']:.4f} {time.perf_counter() - t0:.0f}s")
        wall = time.perf_counter() - t0
        acc = pair_accuracy(held_out_logps(tr, held_ex), base, n_tokens)
        out[kind] = {"steps": tr.total_steps, "examples_seen": tr.total_steps * cfg.batch_size, "wall_s": round(wall, 1),
                     "learning_rate": cfg.learning_rate, "final_loss": round(last["loss"], 4), **acc}
        log(f"{kind}: {out[kind]}")
        del tr
    return out


# -- entry ----------------------------------------------------------------------------------------------------------------
def default_model() -> Path:
    home = Path(os.environ.get("PREFLAB_HOME", ROOT / "data"))
    return home / "models" / "smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=192)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16 autocast is several times faster on CPUs with AVX512-BF16 or AMX")
    ap.add_argument("--algorithms", nargs="+", default=["dpo", "kto"], choices=["dpo", "kto"])
    ap.add_argument("--vs-trl", action="store_true")
    ap.add_argument("--targets", dest="targets_list", nargs="+", choices=list(TARGETS), default=list(TARGETS),
                    help="LoRA targets: all-linear (the default of a job) and attention (q, k, v, o); --vs-trl "
                         "runs each, the other modes the first")
    ap.add_argument("--parallel", action="store_true",
                    help="--vs-trl: start every trainer's process at once, so on a machine others load too each "
                         "meets the same load (ratios only; absolute times are then shared-machine times)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="run TRL with its default gradient checkpointing (off here: the faster TRL baseline)")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--profile", action="store_true", help="where a step's time goes (phases, top operators)")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--quality-train", type=int, default=2000)
    ap.add_argument("--quality-steps", type=int, default=500)
    ap.add_argument("--quality-lr", type=float, default=5e-4)
    ap.add_argument("--quality-held-out", type=int, default=0, help="evaluate on this many held-out pairs (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_whole-child", dest="whole_child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_launched", dest="launched", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.targets = args.targets_list[0]
    if not (args.model / "config.json").exists():
        print(json.dumps({"error": f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."}))
        return 2
    if not args.data.exists():
        print(json.dumps({"error": f"No data at {args.data}; pass --data FILE.jsonl[.gz] with HH-style chosen/rejected."}))
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="preflab-bench-") as tmp:
        work = args.work or Path(tmp)
        if args.whole_child:
            print(json.dumps(whole_process_child(*args.whole_child, args, Path(tempfile.mkdtemp(dir=work)),
                                                 args.launched)))
            return 0
        if args.memory_child:
            print(json.dumps(memory_child(args.memory_child, args, Path(tempfile.mkdtemp(dir=work)))))
            return 0
        result = {"machine": {"device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
                              "cpus": os.cpu_count(), "torch": torch.__version__}, "model": str(args.model)}
        if args.vs_trl:
            result["vs_trl"] = vs_trl(args, work)
        if args.memory:
            result["memory"] = memory(args, work)
        if args.quality:
            result["quality"] = quality(args, work)
        if args.profile:
            result["profile"] = profile(args, work)
        if not (args.vs_trl or args.memory or args.quality or args.profile):
            result["speed"] = speed(args, work)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
