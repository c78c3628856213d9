"""Federated reproduction: `python -m bench.federated`, one JSON object on stdout.

After Spadea & Seneviratne (2025): the first `--train` HH-RLHF pairs are split over `--sites` sites in contiguous
blocks (each site holds its own slice of the data), then the same number of rounds of federated LoRA training
(FedAvg by example count) with
- DPO: each site trains on its own pairs;
- KTO-O: each site keeps its labels, as good and bad rows;
- KTO-R: the good/bad rows permuted across sites (seeded; each site keeps its size), so pairs are broken up and DPO
  could not be trained at all.
Each global adapter is scored on the held-out pairs (the rest of the file) as in `bench.training --quality`:
preference accuracy by implicit reward (policy - base) and by per-token likelihood, against the base model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.hh import HH, hh_pairs
from bench.training import (base_config, default_model, held_out_logps, log, make_run_dir, n_response_tokens,
                            pair_accuracy)
from training.config import FederatedConfig

SETTINGS = {"dpo": ("dpo", "kto-o"), "kto-o": ("kto", "kto-o"), "kto-r": ("kto", "kto-r")}


def site_split(pairs: pd.DataFrame, n_sites: int) -> pd.DataFrame:
    """Contiguous blocks of (nearly) equal size: site-0 holds the first block, and so on."""
    out = pairs.reset_index(drop=True).copy()
    out["site"] = [f"site-{i * n_sites // len(out)}" for i in range(len(out))]
    return out


def scorer(args, work: Path, held: pd.DataFrame, adapter: Path | None):
    """A Trainer holding the base model (+ `adapter`), used only to score the held-out pairs."""
    from training.trainer import Trainer

    cfg = base_config(args, "dpo", max_steps=1, adapter_init=str(adapter) if adapter else None)
    name = f"score-{adapter.parent.name if adapter else 'base'}"
    return Trainer(cfg, make_run_dir(work, name, cfg, held.head(args.batch_size))).prepare()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.federated", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--train", type=int, default=2000, help="pairs split over the sites; the rest are held out")
    ap.add_argument("--held-out", type=int, default=0, help="score on this many held-out pairs (0 = all)")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=192)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = 1
    if not (args.model / "config.json").exists():
        print(json.dumps({"error": f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."}))
        return 2
    import transformers

    from training.data import tokenize
    from training.federated import partition
    from training.federated.simulation import run_federated

    transformers.logging.set_verbosity_error()
    pairs = hh_pairs(args.data)
    train, held = site_split(pairs.iloc[:args.train], args.sites), pairs.iloc[args.train:].reset_index(drop=True)
    if args.held_out:
        held = held.head(args.held_out)
    with tempfile.TemporaryDirectory(prefix="preflab-fedbench-") as tmp:
        work = args.work or Path(tmp)
        base_tr = scorer(args, work, held, None)
        held_ex = tokenize(held, base_tr.tokenizer, "pairs", args.max_length, args.max_prompt_length)
        n_tokens = n_response_tokens(held_ex)
        base = held_out_logps(base_tr, held_ex)
        del base_tr
        out = {"train_pairs": len(train), "held_out_pairs": len(held_ex), "sites": args.sites, "rounds": args.rounds,
               "local_steps": args.local_steps, "batch_size": args.batch_size, "aggregator": "fedavg",
               "precision": args.precision, "base": pair_accuracy(base, base, n_tokens)}
        log(f"base: {out['base']}")
        for setting in args.settings:
            algorithm, data_setting = SETTINGS[setting]
            fed = FederatedConfig(rounds=args.rounds, local_steps=args.local_steps, setting=data_setting)
            cfg = base_config(args, algorithm, max_steps=0, federated=fed)
            run_dir = make_run_dir(work, setting, cfg, train)
            rows = partition.to_unpaired(train) if algorithm == "kto" else train
            if data_setting == "kto-r":
                rows = partition.kto_r(rows, cfg.seed)
            split = partition.summary(rows).to_dict("records")
            t0 = time.perf_counter()
            run_federated(cfg, run_dir)
            wall = time.perf_counter() - t0
            tr = scorer(args, work, held, run_dir / "adapter")
            acc = pair_accuracy(held_out_logps(tr, held_ex), base, n_tokens)
            del tr
            out[setting] = {"algorithm": algorithm, "site_steps": args.sites * args.rounds * args.local_steps,
                            "wall_s": round(wall, 1), "sites_data": split, **acc}
            log(f"{setting}: {out[setting]}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
