"""`python -m bench.active`: the active-learning curve. Does serving the model's least sure tasks first ("unsure")
reach a given accuracy with fewer labels than the random order?

For each queue order a fresh project is made: the first `--pool` HH pairs become pair tasks (which answer is
response_a is drawn once, with a fixed seed, the same for both orders) and the last `--eval` pairs, whose prompts the
pool does not hold, are labeled and saved as the evaluation set. A simulated annotator then labels `--rounds` rounds
of `--round` tasks through the product's own queue (labeling.queue.next_task), answering with the HH data's own
label. After each round a DPO run trains: the first from the base model, the later ones through the "train on what
is new" button (app/iterate.py: from the last adapter, same settings, all labels so far). For the unsure order the
product's score job rates the open tasks before each round (the base model before the first). Jobs run in this
process, in creation order, through a `Supervisor` that is never started: its `ingest` and `_finish` do what the
app does when a job ends; the `evaluate` jobs it queues are skipped (marked stopped), as each run's own end-of-run
evaluation on the same evaluation set already gives its accuracy.

    python -m bench.active [--pool 600 --eval 200 --rounds 4 --round 100]

How to read it: one JSON object on stdout (and a table on stderr as it goes). Per order and round: labels so far,
the run's preference accuracy by implicit reward on the evaluation set with its Wilson 95% interval (the base model
scores 50%), wall seconds spent labeling, scoring and training, and for the unsure order the mean |margin| of the
tasks it served against that of all open tasks (the order did what it says when the served ones are the smallest).
"labels_saved": for each unsure point, the labels the random order needed for the same accuracy (linear
interpolation along random's curve, starting from the base's 50% at 0 labels) minus unsure's.

What it does not measure: real annotators (the simulated one always agrees with HH, never tires, never disagrees),
more than one seed (one draw of sides and one training seed: a difference inside the intervals is no difference).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.hh import HH, hh_pairs
from bench.training import default_model, log
from labeling.stats import bootstrap_mean, direction, wilson
from storage import rundir

ORDERS = ("random", "unsure")
ANNOTATOR = "sim"


def pool_and_eval(pairs: pd.DataFrame, n_pool: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Pool and evaluation pairs as tasks to make: prompt, response_a, response_b and the truth ('a' or 'b'). The
    evaluation pairs come from the end of the file, skipping prompts the pool holds."""
    rng = random.Random(seed)

    def task(r) -> dict:
        a_first = rng.random() < 0.5
        return {"prompt": r.prompt, "response_a": r.chosen if a_first else r.rejected,
                "response_b": r.rejected if a_first else r.chosen, "truth": "a" if a_first else "b"}

    pool = [task(r) for r in pairs.head(n_pool).itertuples()]
    taken = {t["prompt"] for t in pool}
    evals = []
    for r in pairs.iloc[n_pool:].iloc[::-1].itertuples():
        if len(evals) == n_eval:
            break
        if r.prompt not in taken:
            taken.add(r.prompt)
            evals.append(task(r))
    if len(evals) < n_eval:
        raise SystemExit(f"Only {len(evals)} evaluation pairs with prompts outside the pool; asked for {n_eval}.")
    return pool, evals


def make_project(ctx, pool: list[dict], evals: list[dict]) -> dict[str, str]:
    """Tasks for the pool and the evaluation set (labeled by 'hh', saved as the set). Returns {task_id: truth} of
    both."""
    from labeling import evalset
    from labeling.queue import create_task, save_annotation

    truth = {create_task(ctx.db, "pair", t["prompt"], [t["response_a"], t["response_b"]]): t["truth"] for t in pool}
    for t in evals:
        tid = create_task(ctx.db, "pair", t["prompt"], [t["response_a"], t["response_b"]])
        save_annotation(ctx.db, tid, "hh", t["truth"])
        truth[tid] = t["truth"]
    ids = [r[0] for r in ctx.db.fetchall("SELECT DISTINCT t.prompt_id FROM tasks t JOIN annotations a "
                                         "ON a.task_id = t.id WHERE a.annotator = 'hh'")]
    evalset.save_version(ctx.db, ids, f"bench.active: the last {len(evals)} HH pairs")
    return truth


def drive(ctx, sup, kinds: tuple[str, ...]) -> float:
    """Run the queued jobs of these kinds in creation order, as the supervisor would (the `evaluate` jobs its hook
    queues are skipped). Returns wall seconds. A failed job ends the benchmark with its error."""
    from training.__main__ import run_job

    t0 = time.perf_counter()
    while True:
        row = ctx.db.fetchone(f"SELECT id, kind, run_dir FROM runs WHERE state = 'queued' AND kind IN "
                              f"({', '.join('?' * (len(kinds) + 1))}) ORDER BY created_at, id", [*kinds, "evaluate"])
        if row is None:
            return time.perf_counter() - t0
        run_id, kind, run_dir = row[0], row[1], Path(row[2])
        if kind == "evaluate":
            rundir.write_status(run_dir, state="stopped")
            sup._finish(run_id, run_dir, "stopped", "Skipped by bench.active: the run's own evaluation has it.")
            continue
        ctx.db.execute("UPDATE runs SET state = 'running', started_at = current_timestamp WHERE id = ?", [run_id])
        with contextlib.redirect_stdout(sys.stderr):   # the job's progress bar: stdout holds the result alone
            run_job(run_dir)
        st = rundir.read_status(run_dir) or {}
        sup.ingest(run_id, run_dir)
        sup._finish(run_id, run_dir, st.get("state", "failed"), st.get("error"))
        if st.get("state") != "finished":
            raise SystemExit(f"The {kind} job {run_id} ended {st.get('state')}: {st.get('error')}")


def accuracy(run_dir: Path) -> dict:
    """The run's last evaluation: preference accuracy by implicit reward, n, Wilson 95% interval."""
    evals = [m for m in rundir.read_metrics(run_dir)[0] if m.get("split") == "eval" and "eval/accuracy" in m]
    acc = max(evals, key=lambda m: m["step"])["eval/accuracy"]
    n = len(pd.read_parquet(run_dir / rundir.EVAL_DATA))
    lo, hi = wilson(acc * n, n)
    return {"accuracy": round(acc, 4), "interval": [round(lo, 4), round(hi, 4)], "n": n}


def outcomes(ctx, run_id: str, truth: dict[str, str], work: Path) -> dict[str, float]:
    """Per evaluation pair, whether the run preferred HH's answer (1, a tie 0.5, else 0): the product's score job
    with the run's adapter over the evaluation set's tasks, in a run directory of its own (its scores must not
    become the queue's). The reference log-probs of an earlier call are passed in: one forward per answer."""
    from training.__main__ import run_job

    config = json.loads(ctx.db.scalar("SELECT config FROM runs WHERE id = ?", [run_id]))
    run_dir = Path(ctx.db.scalar("SELECT run_dir FROM runs WHERE id = ?", [run_id]))
    cfg = {k: config[k] for k in ("model", "lora", "beta", "batch_size", "max_length", "max_prompt_length",
                                  "precision", "seed")}
    tasks = ctx.db.df("""SELECT t.id AS task_id, t.kind, p.text AS prompt, ra.text AS response_a, rb.text AS response_b
                         FROM tasks t JOIN prompts p ON p.id = t.prompt_id JOIN responses ra ON ra.id = t.response_a
                         JOIN responses rb ON rb.id = t.response_b
                         WHERE t.id IN (SELECT DISTINCT task_id FROM annotations WHERE annotator = 'hh')""")
    known = work / "reference.parquet"
    if known.exists():
        tasks = tasks.merge(pd.read_parquet(known), on="task_id", how="left")
    job = work / run_id
    (job / rundir.DATA).mkdir(parents=True)
    tasks.to_parquet(job / rundir.TRAIN_DATA, index=False)
    rundir.write_json_atomic(job / rundir.CONFIG, {**cfg, "kind": "score", "adapter_init": str(run_dir / rundir.ADAPTER)})
    with contextlib.redirect_stdout(sys.stderr):
        if run_job(job) != 0:
            raise SystemExit(f"Scoring the evaluation set with run {run_id} failed: {rundir.read_status(job)}")
    scores = pd.read_parquet(job / rundir.SCORES)
    scores[["task_id", "ref_logp_a", "ref_logp_b"]].to_parquet(known, index=False)
    return {tid: 0.5 if s == 0 else float((s > 0) == (truth[tid] == "a"))
            for tid, s in zip(scores["task_id"], scores["score"])}


def margins(db, served: list[str]) -> dict:
    """|margin| (task_scores.unsure) of the tasks served this round against that of all tasks open before it, and
    the training run that scored them (None: the base model)."""
    s = db.df("SELECT task_id, unsure FROM task_scores").set_index("task_id")["unsure"]
    mine, rest = s[s.index.isin(served)], s[~s.index.isin(served)]
    by = db.scalar("SELECT r.parent_id FROM task_scores s JOIN runs r ON r.id = s.run_id LIMIT 1")
    return {"scored_by": by, "served_mean": round(float(mine.mean()), 6), "served_max": float(mine.max()),
            "open_mean": round(float(s.mean()), 6), "unserved_min": float(rest.min()) if len(rest) else None}


def run_order(args, order: str, home: Path, pool, evals) -> list[dict]:
    from app.context import LOCAL_ADMIN, AppContext
    from app.iterate import train_on_what_is_new
    from app.launch import create_run
    from app.queue_scores import queue_scoring
    from app.supervisor import Supervisor
    from labeling import queue_order
    from labeling.dataset import training_rows
    from labeling.queue import next_task, save_annotation
    from training.config import JobConfig, LoraConfig

    ctx = AppContext(home=home)
    sup = Supervisor(ctx)   # never started: drive() calls what its loop would when a job ends
    pick = random.Random(args.seed)   # the queue's own random choices, so a rerun serves the same tasks
    rounds = []
    try:
        truth = make_project(ctx, pool, evals)
        queue_order.set_order(ctx.db, "pair", order)
        if order == "unsure":
            queue_scoring(ctx)   # as the app does when the order is picked: the base model scores first
        for r in range(args.rounds):
            scoring_s = drive(ctx, sup, ("score",))
            t0 = time.perf_counter()
            served = []
            for _ in range(args.round):
                task = next_task(ctx.db, ANNOTATOR, kind="pair", rng=pick)
                if task is None:
                    break
                save_annotation(ctx.db, task["task_id"], ANNOTATOR, truth[task["task_id"]])
                served.append(task["task_id"])
            labeling_s = time.perf_counter() - t0
            margin = margins(ctx.db, served) if order == "unsure" else None   # the scores it was served by
            if r == 0:
                cfg = JobConfig(algorithm="dpo", model=str(args.model), lora=LoraConfig(r=8, alpha=16, dropout=0.0),
                                batch_size=args.batch_size, max_length=args.max_length,
                                max_prompt_length=args.max_prompt_length, learning_rate=args.lr, precision="fp32",
                                max_steps=math.ceil(args.round / args.batch_size), seed=0, checkpoint_every=0,
                                eval_every=0, max_new_tokens=16)   # the runs' 8 sample answers: kept short
                run_id = create_run(ctx, cfg, training_rows(ctx.db, "pairs"), name="round 1: dpo from the base model")
            else:
                train_on_what_is_new(ctx, LOCAL_ADMIN)
                run_id = ctx.db.scalar("SELECT id FROM runs WHERE kind = 'train' ORDER BY created_at DESC LIMIT 1")
            training_s = drive(ctx, sup, ("train",))
            run_dir = Path(ctx.db.scalar("SELECT run_dir FROM runs WHERE id = ?", [run_id]))
            per_pair = outcomes(ctx, run_id, truth, home / "evaluation-scores")
            point = {"round": r + 1, "labels": int(ctx.db.scalar(
                         "SELECT count(*) FROM annotations WHERE annotator = ?", [ANNOTATOR])),
                     "served": len(served), **accuracy(run_dir), "run_id": run_id,
                     "adapter_init": (rundir.read_config(run_dir) or {}).get("adapter_init"),
                     "labeling_s": round(labeling_s, 2), "scoring_s": round(scoring_s, 1),
                     "training_s": round(training_s, 1)}
            if margin:
                point["margin"] = margin
            point["per_pair"] = per_pair
            rounds.append(point)
            log(f"{order:>6} | round {r + 1} | {point['labels']:>5} labels | acc {point['accuracy']:.3f} "
                f"[{point['interval'][0]:.3f}, {point['interval'][1]:.3f}] | label {labeling_s:.1f}s "
                f"score {scoring_s:.0f}s train {training_s:.0f}s"
                + (f" | |margin| served {margin['served_mean']:.4f} open {margin['open_mean']:.4f}" if margin else ""))
        for run_id, run_dir in ctx.db.fetchall("SELECT id, run_dir FROM runs WHERE state = 'queued'"):
            rundir.write_status(run_dir, state="stopped")
            sup._finish(run_id, Path(run_dir), "stopped", "Skipped by bench.active: no round follows.")
    finally:
        ctx.db.close()
    return rounds


def labels_needed(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels the curve needed to first reach `target`, interpolated linearly; None if it never did."""
    for (l0, a0), (l1, a1) in zip(curve, curve[1:]):
        if a0 >= target:
            return float(l0)
        if a1 >= target:
            return l0 + (target - a0) / (a1 - a0) * (l1 - l0)
    return None


def compare(random_: list[dict], unsure: list[dict]) -> tuple[list[dict], str]:
    curve = [(0, 0.5)] + [(p["labels"], p["accuracy"]) for p in random_]   # the base scores 50% exactly
    saved = []
    for p in unsure:
        need = labels_needed(curve, p["accuracy"])
        saved.append({"labels": p["labels"], "accuracy": p["accuracy"],
                      "random_needed": None if need is None else round(need, 1),
                      "labels_saved": None if need is None else round(need - p["labels"], 1),
                      **({} if need is not None else
                         {"note": f"random never reached {p['accuracy']:.1%} within {curve[-1][0]} labels"})})
    paired = []
    for u, r in zip(unsure, random_):       # the same evaluation pairs: the difference per pair, bootstrapped
        diff, lo, hi = bootstrap_mean([u["per_pair"][t] - r["per_pair"][t] for t in sorted(u["per_pair"])])
        paired.append({"labels": u["labels"], "difference": round(diff, 4), "interval": [round(lo, 4), round(hi, 4)],
                       "direction": direction(lo, hi, 0.0)})
    for s, p in zip(saved, paired):
        s["paired_vs_random"] = p
    if all(p["direction"] == "no measurable change" for p in paired):
        return saved, ("No measurable difference: the paired 95% interval of unsure minus random covers 0 at every "
                       "point.")
    best = max(saved, key=lambda s: s["accuracy"])
    need = (f"random needed {best['random_needed']:.0f}" if best["random_needed"] is not None
            else f"random did not reach it within {curve[-1][0]}")
    where = ", ".join(f"{p['direction']} at {p['labels']}" for p in paired)
    return saved, f"Unsure first reached {best['accuracy']:.1%} with {best['labels']} labels; {need} (paired: {where})."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.active", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--pool", type=int, default=600, help="the first N HH pairs are the tasks to label")
    ap.add_argument("--eval", type=int, default=200, help="the last N HH pairs are the evaluation set")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--round", type=int, default=100, help="labels per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0, help="which answer is response_a, and the random order's draws")
    ap.add_argument("--home", type=Path, help="keep each order's project here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").exists():
        error = f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."
        print(json.dumps({"error": error}))
        return 2
    import transformers

    transformers.logging.set_verbosity_error()
    pool, evals = pool_and_eval(hh_pairs(args.data), args.pool, args.eval, args.seed)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "home"}
    out = {"settings": {**settings, "max_steps_per_round": math.ceil(args.round / args.batch_size)}}
    before = os.environ.get("PREFLAB_MODEL")
    os.environ["PREFLAB_MODEL"] = str(args.model)   # ctx.default_model(): what the base-model score job loads
    try:
        with tempfile.TemporaryDirectory(prefix="preflab-active-") as tmp:
            for order in ORDERS:
                out[order] = run_order(args, order, (args.home or Path(tmp)) / order, pool, evals)
    finally:
        if before is None:
            os.environ.pop("PREFLAB_MODEL", None)
        else:
            os.environ["PREFLAB_MODEL"] = before
    out["labels_saved"], out["summary"] = compare(out["random"], out["unsure"])
    for p in out["random"] + out["unsure"]:   # the per-pair outcomes' mean: the accuracy again, as a cross-check
        per_pair = p.pop("per_pair")
        p["accuracy_from_scores"] = round(sum(per_pair.values()) / len(per_pair), 4)
    log(out["summary"])
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
