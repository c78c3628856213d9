"""`python -m bench.verdict`: did fine-tuning help? DPO and KTO runs on SmolLM2 with the HH data, each judged
against the base model on one fixed evaluation set, with 95% intervals and the verdict words the app shows.

The workload: the first `--train` HH pairs (default 2,000) train, the pairs after them (308 in the shipped file) are
the evaluation set. KTO trains on the same pairs as good/bad rows. On a shared CPU a whole epoch is too slow, so each
run trains `--max-steps` steps or `--minutes` of wall time, whichever ends first (after preparing the trainer,
reported apart as prepare_s), and the report says how many pairs it saw. One JSON object on stdout; progress on
stderr.

Scores (labeling.stats): preference accuracy by implicit reward (the run raised the preferred answer's probability
against the other one more than the base did; the base scores exactly 50%, so this is the paired, run-vs-base
measure the verdict uses) and by the model's own per-token likelihood (its base figure is measured), each with its
Wilson interval; the verdict direction comes from the interval, never from the point estimate.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.hh import HH, hh_pairs
from bench.training import (_fresh_accelerate_state, default_model, held_out_logps, interleaved_unpaired, log,
                            make_run_dir, n_response_tokens)
from labeling.stats import verdict, wilson
from training.config import JobConfig, LoraConfig


def scores(policy: torch.Tensor, base: torch.Tensor, n_tokens: torch.Tensor) -> dict:
    """Per-pair wins from [2, n] summed log-probs (chosen, rejected): by implicit reward (ties count half) and by
    per-token likelihood."""
    r = policy - base
    reward = (r[0] > r[1]).float() + 0.5 * (r[0] == r[1]).float()
    per_token = policy / n_tokens
    return {"n": int(r.shape[1]), "reward_wins": float(reward.sum()),
            "likelihood_wins": float((per_token[0] > per_token[1]).float().sum())}


def judged(s: dict, base_likelihood: float) -> dict:
    n = s["n"]
    v = verdict(s["reward_wins"], n, 0.5)
    lo, hi = wilson(s["likelihood_wins"], n)
    return {"verdict": v["text"], "direction": v["direction"],
            "reward_accuracy": round(v["rate"], 4), "reward_interval": [round(v["low"], 4), round(v["high"], 4)],
            "likelihood_accuracy": round(s["likelihood_wins"] / n, 4),
            "likelihood_interval": [round(lo, 4), round(hi, 4)],
            "likelihood_vs_base": verdict(s["likelihood_wins"], n, base_likelihood)["direction"]}


def run(args, work: Path) -> dict:
    from training.data import tokenize
    from training.modeling import load_tokenizer
    from training.trainer import Trainer

    tok = load_tokenizer(args.model)
    allp = hh_pairs(args.data)
    train, held = allp.iloc[:args.train], allp.iloc[args.train:].reset_index(drop=True)
    if args.eval_pairs:
        held = held.head(args.eval_pairs)
    held_ex = tokenize(held, tok, "pairs", args.max_length, args.max_prompt_length)
    if len(held_ex) < args.min_eval:
        raise SystemExit(f"Only {len(held_ex)} held-out pairs; the benchmark needs at least {args.min_eval}.")
    n_tokens = n_response_tokens(held_ex)
    out = {"train_pairs": len(train), "evaluation_pairs": len(held_ex), "precision": args.precision,
           "batch_size": args.batch_size, "learning_rate": args.lr, "max_steps": args.max_steps,
           "minutes_per_run": args.minutes}
    base = None
    for kind in args.algorithms:
        rows = train if kind == "dpo" else interleaved_unpaired(train)
        cfg = JobConfig(algorithm=kind, model=str(args.model), lora=LoraConfig(r=8, alpha=16, dropout=0.0),
                        batch_size=args.batch_size, max_length=args.max_length,
                        max_prompt_length=args.max_prompt_length,
                        learning_rate=args.lr, max_steps=args.max_steps, seed=0, checkpoint_every=0,
                        precision=args.precision)
        _fresh_accelerate_state()
        tr = Trainer(cfg, make_run_dir(work, f"verdict-{kind}", cfg, rows))
        t_prep = time.perf_counter()
        tr.prepare()                       # loads the model and tokenizes
        prepare_s = time.perf_counter() - t_prep
        if base is None:
            t_eval = time.perf_counter()
            base = held_out_logps(tr, held_ex)
            b = scores(base, base, n_tokens)
            lo, hi = wilson(b["likelihood_wins"], b["n"])
            out["base"] = {"reward_accuracy": 0.5, "likelihood_accuracy": round(b["likelihood_wins"] / b["n"], 4),
                           "likelihood_interval": [round(lo, 4), round(hi, 4)],
                           "eval_s": round(time.perf_counter() - t_eval, 1)}
            log(f"base: {out['base']}")
        t0 = time.perf_counter()             # the budget is for training steps; preparing is reported apart
        steps, loss = 0, None
        while steps < tr.total_steps and time.perf_counter() - t0 < args.minutes * 60:
            s, _ = tr.train_step()
            steps, loss = steps + 1, s["loss"]
            if steps % 10 == 0:
                log(f"{kind} step {steps}/{tr.total_steps} loss {loss:.4f} {time.perf_counter() - t0:.0f}s")
        wall = time.perf_counter() - t0
        res = judged(scores(held_out_logps(tr, held_ex), base, n_tokens), out["base"]["likelihood_accuracy"])
        seen = steps * cfg.batch_size
        out[kind] = {"steps": steps, "examples_seen": seen,
                     "pairs_seen": seen if kind == "dpo" else f"{seen} good/bad rows = {seen // 2} pairs' answers",
                     "prepare_s": round(prepare_s, 1), "train_wall_s": round(wall, 1),
                     "final_loss": None if loss is None else round(loss, 4), **res}
        log(f"{kind}: {out[kind]}")
        del tr
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verdict", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--train", type=int, default=2000, help="train on the first N pairs")
    ap.add_argument("--eval-pairs", type=int, default=0, help="judge on the first N held-out pairs (0 = all)")
    ap.add_argument("--min-eval", type=int, default=300, help="refuse to judge on fewer held-out pairs")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--minutes", type=float, default=12.0, help="training wall-time budget per run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=192)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--algorithms", nargs="+", default=["dpo", "kto"], choices=["dpo", "kto"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").exists():
        print(json.dumps({"error": f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."}))
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="preflab-verdict-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
