"""Training benchmarks: `python -m bench.training [--vs-trl] [--memory] [--quality]`, one JSON object on stdout.

The standard workload (issue: "Training core"): SmolLM2-135M + LoRA r=8 on the first 256 HH-RLHF pairs, batch 4,
max length 256. HH prompts are whole dialogues, often longer than the limit; pairs whose chat-templated prompt
does not fit in `max_prompt_length` tokens are passed over (TRL drops them too), so both trainers see the same
token ids: prompt + (response + EOS), cut at `max_length`.

- default: our steps/s and response tokens/s for SFT, DPO and KTO.
- `--vs-trl`: TRL's DPOTrainer / KTOTrainer on the identical batches (same order, same LoRA initial weights, same
  optimizer settings) in this process; steps/s ratio and the step-1 (and later) losses side by side. Our time
  includes computing the cached reference log-probs; TRL's runs its reference forward every step (its default).
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
    settings = dict(algorithm=algorithm, model=str(args.model), lora=LoraConfig(r=8, alpha=16, dropout=0.0),
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
    tr.prepare()                     # loads the model, tokenizes, caches reference log-probs for `steps` steps
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
    ref_time = _ref_cache_time(tr)
    return {"losses": losses, "logs": logs, "steps": steps, "loop_s": t_steps, "reference_s": ref_time, "prepare_s": t_prepare,
            "steps_per_s": steps / (t_steps + ref_time), "loop_steps_per_s": steps / t_steps,
            "response_tokens_per_s": tokens / (t_steps + ref_time), "trainer": tr}


def _ref_cache_time(tr) -> float:
    """Time to recompute the cached reference log-probs (what prepare() spent on them)."""
    path = tr.run_dir / "ref_logps.pt"
    if not path.exists():
        return 0.0
    path.unlink()
    t0 = time.perf_counter()
    tr.cache_references()
    return time.perf_counter() - t0


def initial_lora_state(args) -> dict:
    """The LoRA weights our trainer starts from (seeded), to start TRL's model from the very same ones."""
    from training.modeling import add_lora, load_model, trainable_state

    torch.manual_seed(args.seed)
    return trainable_state(add_lora(load_model(args.model), LoraConfig(r=8, alpha=16, dropout=0.0)))


# -- TRL ----------------------------------------------------------------------------------------------------------------
def run_trl(kind: str, args, rows: pd.DataFrame, init_state: dict, out_dir: Path) -> dict:
    """TRL's trainer on the same rows: the prompt given as already chat-templated text (TRL adds the EOS)."""
    import datasets
    from transformers import TrainerCallback

    from training.data import encode_prompt
    from training.modeling import add_lora, load_model, load_tokenizer, load_trainable_state

    _fresh_accelerate_state()
    tok = load_tokenizer(args.model)
    text = {p: tok.decode(encode_prompt(tok, p)) for p in rows["prompt"].unique()}
    torch.manual_seed(args.seed)
    model = add_lora(load_model(args.model), LoraConfig(r=8, alpha=16, dropout=0.0))
    load_trainable_state(model, init_state)
    common = dict(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                  learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=args.seed, max_length=args.max_length,
                  beta=0.1, train_sampling_strategy="sequential", dataloader_num_workers=0, remove_unused_columns=False,
                  bf16=args.precision == "bf16",   # TRL's default is bf16 autocast, even on a CPU: match ours
                  gradient_checkpointing=args.trl_gradient_checkpointing)
    losses: list[dict] = []

    class Keep(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(dict(logs))

    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        ds = datasets.Dataset.from_dict({"prompt": [text[p] for p in rows["prompt"]],
                                         "chosen": list(rows["chosen"]), "rejected": list(rows["rejected"])})
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, loss_type=["sigmoid"]), train_dataset=ds,
                             processing_class=tok, callbacks=[Keep()])
    else:
        from trl import KTOConfig, KTOTrainer

        ds = datasets.Dataset.from_dict({"prompt": [text[p] for p in rows["prompt"]],
                                         "completion": list(rows["completion"]), "label": list(rows["label"])})
        trainer = KTOTrainer(model=model, args=KTOConfig(**common, desirable_weight=1.0, undesirable_weight=1.0),
                             train_dataset=ds, processing_class=tok, callbacks=[Keep()])
    import contextlib

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):      # the HF Trainer prints its log dicts
        trainer.train()
    elapsed = time.perf_counter() - t0
    return {"losses": [l["loss"] for l in losses], "logs": losses, "steps": args.steps, "train_s": elapsed,
            "steps_per_s": args.steps / elapsed, "dataset": trainer.train_dataset}


def same_tokens(ours_trainer, trl_dataset, kind: str, n: int) -> bool:
    """Do both trainers see the same token ids for the first n examples?"""
    for i in range(n):
        ex, row = ours_trainer.examples[i], trl_dataset[i]
        if kind == "dpo":
            want = [(ex.prompt, ex.responses[0]), (ex.prompt, ex.responses[1])]
            got = [(row["prompt_ids"], row["chosen_ids"]), (row["prompt_ids"], row["rejected_ids"])]
        else:
            want, got = [(ex.prompt, ex.responses[0])], [(row["prompt_ids"], row["completion_ids"])]
        for (wp, wr), (gp, gr) in zip(want, got):
            if list(wp) + list(wr) != (list(gp) + list(gr))[: len(wp) + len(wr)]:
                return False
    return True


def warm_up(args, tok, pairs: pd.DataFrame) -> None:
    """One untimed forward and backward, so neither trainer pays the process's first-call costs (allocator
    growth, kernel selection) inside its timing."""
    from training.data import make_batch, tokenize
    from training.modeling import add_lora, load_model, response_logps

    model = add_lora(load_model(args.model), LoraConfig(r=8, alpha=16, dropout=0.0))
    b = make_batch(tokenize(pairs.head(args.batch_size), tok, "pairs", args.max_length, args.max_prompt_length),
                   "pairs", tok.pad_token_id)
    for _ in range(2):
        response_logps(model, b.input_ids, b.attention_mask, b.response_mask).logps.sum().backward()
        model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float().mean().backward()


def vs_trl(args, work: Path) -> dict:
    from training.modeling import load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = fitting(hh_pairs(args.data), tok, args.max_prompt_length, args.pairs)
    init = initial_lora_state(args)
    warm_up(args, tok, pairs)
    out = {"workload": {"pairs": len(pairs), "batch_size": args.batch_size, "max_length": args.max_length,
                        "max_prompt_length": args.max_prompt_length, "steps": args.steps, "lora_r": 8,
                        "precision": args.precision, "trl_gradient_checkpointing": args.trl_gradient_checkpointing}}
    for kind in args.algorithms:
        rows = pairs if kind == "dpo" else interleaved_unpaired(pairs)
        cfg = base_config(args, kind)
        log(f"{kind}: ours, {args.steps} steps")
        ours = run_ours(cfg, make_run_dir(work, f"ours-{kind}", cfg, rows), args.steps)
        log(f"{kind}: ours {ours['steps_per_s']:.3f} steps/s; TRL next")
        trl = run_trl(kind, args, rows, init, work / f"trl-{kind}")
        ratio = ours["steps_per_s"] / trl["steps_per_s"]
        log(f"{kind}: TRL {trl['steps_per_s']:.3f} steps/s, ratio {ratio:.2f}")
        out[kind] = {
            "ours_steps_per_s": round(ours["steps_per_s"], 4),
            "ours_loop_steps_per_s": round(ours["loop_steps_per_s"], 4),
            "ours_reference_s": round(ours["reference_s"], 2),
            "ours_response_tokens_per_s": round(ours["response_tokens_per_s"], 1),
            "trl_steps_per_s": round(trl["steps_per_s"], 4),
            "speedup": round(ratio, 3),
            "same_token_ids": same_tokens(ours["trainer"], trl["dataset"], kind, min(len(rows), 64)),
            "loss_ours": [round(x, 6) for x in ours["losses"]],
            "loss_trl": [round(x, 6) for x in trl["losses"]],
            "step1_loss_equal": bool(trl["losses"]) and abs(ours["losses"][0] - trl["losses"][0]) < 1e-4,
            "max_loss_difference": round(max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])), 6),
            "logps_chosen_ours": [round(x["logps/chosen"], 3) for x in ours["logs"] if "logps/chosen" in x],
            "logps_chosen_trl": [round(x["logps/chosen"], 3) for x in trl["logs"] if "logps/chosen" in x],
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
                     "reference_s": round(r["reference_s"], 2)}
        log(f"{kind}: {out[kind]}")
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
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="run TRL with its default gradient checkpointing (off here: the faster TRL baseline)")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--quality-train", type=int, default=2000)
    ap.add_argument("--quality-steps", type=int, default=500)
    ap.add_argument("--quality-lr", type=float, default=5e-4)
    ap.add_argument("--quality-held-out", type=int, default=0, help="evaluate on this many held-out pairs (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
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
        if not (args.vs_trl or args.memory or args.quality):
            result["speed"] = speed(args, work)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
