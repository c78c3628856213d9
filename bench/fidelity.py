"""Research-fidelity figures: `python -m bench.fidelity`, one JSON object on stdout (progress on stderr).

- SFT vs MinorSFT (arXiv 2408.10642's central claim: lower deviation from the base at equal loss). Both runs train
  the same LoRA start on the same HH chosen answers in the same order, with the same (per-sequence mean)
  reduction. Every `--probe-every` steps a fixed probe set of training answers is scored (its per-sequence mean
  NLL: how well the run fits what it trains on) and so are `--held-out` answers it never trains on (their mean
  m_theta against the base: how far the model moved elsewhere). m_theta on the training probe itself would say
  nothing here: with a per-sequence mean it is exactly the probe's NLL drop, the same for any run at equal NLL.
  The held-out m_theta is read off each run at the same training NLL levels (linear interpolation), from the
  base's NLL down to the level both runs reached.
- DPO vs eps-DPO on the same pairs: final training loss and reward accuracy, held-out preference accuracy and
  m_theta, and eps-DPO's beta and share of instances whose beta-tilde moved.
Each run is short (CPU-sized); compare the two runs of a pair, not absolute numbers across machines.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.hh import HH, hh_pairs
from bench.training import (_fresh_accelerate_state, default_model, fitting, held_out_logps, make_run_dir,
                            n_response_tokens, pair_accuracy)
from training.config import JobConfig, LoraConfig


def log(msg: str) -> None:
    print(f"[fidelity] {msg}", file=sys.stderr, flush=True)


def base_config(args, algorithm: str, **over) -> JobConfig:
    """The same LoRA (r 8 on every linear layer) and optimisation for every run of a comparison; no evaluation
    pass inside the job (the comparisons score their own probe and held-out sets)."""
    return JobConfig(algorithm=algorithm, model=str(args.model), lora=LoraConfig(r=8, alpha=16, dropout=0.0),
                     batch_size=args.batch_size, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                     learning_rate=args.learning_rate, max_steps=args.steps, seed=args.seed, checkpoint_every=0,
                     precision=args.precision, eval_every=0, **over)


@torch.no_grad()
def sft_probe(tr, examples) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [n] and response token counts [n] of SFT examples under `tr`'s policy."""
    from training.data import make_batch

    lps, nts = [], []
    for s in range(0, len(examples), 8):
        b = make_batch(examples[s:s + 8], "sft", tr.tokenizer.pad_token_id)
        with tr.accelerator.autocast():
            out = tr.logps(tr.model, b.parts)
        lps.append(out.logps.float().cpu())
        nts.append(out.n_tokens.cpu().clamp(min=1))
    return torch.cat(lps), torch.cat(nts)


def matched(curves: dict[str, list[tuple[float, float]]], levels: int = 3) -> list[dict]:
    """m_theta of each run at the same NLL levels: from the shared starting NLL down to the lowest NLL every run
    reached, `levels` evenly spaced levels, each run's (nll, m) curve interpolated linearly."""
    start = max(c[0][0] for c in curves.values())
    reached = max(min(n for n, _ in c) for c in curves.values())
    if start - reached < 1e-6:
        return []
    out = []
    for k in range(1, levels + 1):
        level = start - (start - reached) * k / levels
        row = {"nll": round(level, 4)}
        for name, c in curves.items():
            pts = sorted(c)
            row[f"m_theta_{name}"] = round(float(np.interp(level, [n for n, _ in pts], [m for _, m in pts])), 5)
        out.append(row)
    return out


def sft_vs_minor_sft(args, work: Path, pairs) -> dict:
    from training.data import tokenize
    from training.modeling import load_tokenizer
    from training.trainer import Trainer

    tok = load_tokenizer(args.model)
    rows = fitting(pairs, tok, args.max_prompt_length, args.pairs + args.held_out)
    answers = rows.rename(columns={"chosen": "completion"}).drop(columns="rejected")
    sft_rows, held_rows = answers.head(args.pairs), answers.iloc[args.pairs:].reset_index(drop=True)
    probe = tokenize(sft_rows.head(args.probe).reset_index(drop=True), tok, "sft", args.max_length,
                     args.max_prompt_length)
    held = tokenize(held_rows, tok, "sft", args.max_length, args.max_prompt_length)
    out, curves = {"train_answers": len(sft_rows), "probe_answers": len(probe), "held_out_answers": len(held)}, {}
    for kind in ("sft", "minor_sft"):
        _fresh_accelerate_state()
        cfg = base_config(args, kind, sft_reduction="seq_mean", beta=args.minor_beta)
        tr = Trainer(cfg, make_run_dir(work, kind, cfg, sft_rows)).prepare()
        base, n = sft_probe(tr, probe)
        held_base, held_n = sft_probe(tr, held)
        curve, t0 = [(float((-base / n).mean()), 0.0)], time.perf_counter()
        log(f"{kind} step 0: probe NLL {curve[0][0]:.4f}, held-out m_theta 0")
        for step in range(1, args.steps + 1):
            s, _ = tr.train_step()
            if step % args.probe_every == 0 or step == args.steps:
                lp, _ = sft_probe(tr, probe)
                held_lp, _ = sft_probe(tr, held)
                curve.append((float((-lp / n).mean()), float(((held_lp - held_base) / held_n).mean())))
                log(f"{kind} step {step}: loss {s['loss']:.4f}, probe NLL {curve[-1][0]:.4f}, "
                    f"held-out m_theta {curve[-1][1]:.5f}")
        curves[kind] = curve
        out[kind] = {"steps": args.steps, "wall_s": round(time.perf_counter() - t0, 1),
                     "probe": [{"nll": round(a, 4), "m_theta": round(b, 5)} for a, b in curve]}
        del tr
    out["at_matched_nll"] = matched(curves)
    return out


def dpo_vs_eps_dpo(args, work: Path, pairs) -> dict:
    from training.data import tokenize
    from training.modeling import load_tokenizer
    from training.trainer import Trainer

    tok = load_tokenizer(args.model)
    rows = fitting(pairs, tok, args.max_prompt_length, args.pairs + args.held_out)
    train, held = rows.head(args.pairs), rows.iloc[args.pairs:].reset_index(drop=True)
    held_ex = tokenize(held, tok, "pairs", args.max_length, args.max_prompt_length)
    n_tokens = n_response_tokens(held_ex)
    out, base = {"train_pairs": len(train), "held_out_pairs": len(held_ex)}, None
    for kind in ("dpo", "eps_dpo"):
        _fresh_accelerate_state()
        cfg = base_config(args, kind, epsilon=args.epsilon)
        tr = Trainer(cfg, make_run_dir(work, kind, cfg, train)).prepare()
        if base is None:
            base = held_out_logps(tr, held_ex)
        t0, logs = time.perf_counter(), []
        for step in range(1, args.steps + 1):
            s, _ = tr.train_step()
            logs.append(s)
            if step % args.probe_every == 0:
                log(f"{kind} step {step}: loss {s['loss']:.4f}")
        last = logs[-5:]
        mean = lambda k: round(sum(s[k] for s in last) / len(last), 4)  # noqa: E731 - last 5 steps
        r = {"steps": args.steps, "wall_s": round(time.perf_counter() - t0, 1), "final_loss": mean("loss"),
             "train_reward_accuracy": mean("rewards/accuracies"), "train_margin": mean("rewards/margins"),
             "train_m_theta": mean("m_theta"), "held_out": pair_accuracy(held_out_logps(tr, held_ex), base, n_tokens)}
        if kind == "eps_dpo":
            r.update(final_beta=round(tr.beta, 6), beta_tilde_relaxed=mean("kl/p_epsilon_steps"),
                     beta_tilde_tightened=mean("kl/n_epsilon_steps"))
        out[kind] = r
        del tr
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--pairs", type=int, default=128, help="training pairs (SFT trains on their chosen answers)")
    ap.add_argument("--held-out", type=int, default=64, help="answers never trained on (both comparisons)")
    ap.add_argument("--probe", type=int, default=32, help="training answers scored for the SFT/MinorSFT curves")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--probe-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--minor-beta", type=float, default=0.1)
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--only", choices=["sft", "dpo"], default=None, help="run one of the two comparisons")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").exists():
        print(json.dumps({"error": f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."}))
        return 2
    import transformers

    transformers.logging.set_verbosity_error()
    pairs = hh_pairs(args.data)
    result = {"model": str(args.model), "steps": args.steps, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="preflab-fidelity-") as tmp:
        if args.only in (None, "sft"):
            result["sft_vs_minor_sft"] = sft_vs_minor_sft(args, Path(tmp) / "sft", pairs)
        if args.only in (None, "dpo"):
            result["dpo_vs_eps_dpo"] = dpo_vs_eps_dpo(args, Path(tmp) / "dpo", pairs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
