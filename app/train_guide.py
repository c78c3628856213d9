"""What a run means before it starts, in words a non-engineer can act on: how many optimizer steps and passes over
the data the settings give, how long that takes on this machine (measured on earlier runs, else a first guess from
the model's size), and which algorithm fits the labels at hand. Pure functions; the Train page feeds them."""
from __future__ import annotations

import math
import statistics

from training import algorithms

MAX_PASSES = 3   # above this many passes over the same labels a small model starts memorising them
# Forward-backward work per example relative to one answer, by data kind (a pair is two answers; KTO adds a no-grad
# forward for its KL pairs), half again for reference logits every step (ε-DPO): scales another algorithm's speed.
WORK = {"sft": 1.0, "pairs": 2.0, "unpaired": 1.5}


def work(algorithm: str) -> float:
    a = algorithms.ALGORITHMS.get(algorithm)
    return WORK[a.data_kind] * (1.5 if a.needs_ref_logits else 1.0) if a else 1.0


# Sustained training FLOP/s of a first run, before anything is measured: a few CPU cores (DPO on SmolLM2 in fp32
# measured 5.3 s a step of 4 pairs of ~180 tokens, docs/benchmarks.md: about 2e11), one recent GPU.
FIRST_GUESS_FLOPS = {"cpu": 2e11, "gpu": 2e13}


def plan(n_examples: int, data_kind: str, batch_size: int, grad_accum: int = 1, max_steps: int = 0,
         epochs: float = 1.0, processes: int = 1) -> tuple[int, float]:
    """(optimizer steps, passes over the data) as training/trainer.py counts them: a step takes grad_accum
    micro-batches on each process; max_steps 0 means `epochs` passes."""
    if n_examples <= 0:
        return 0, 0.0
    n_batches = math.ceil(n_examples / batch_size)
    if data_kind == "unpaired" and n_examples % batch_size == 1 and n_batches > 1:
        n_batches -= 1   # the trainer drops a KTO batch of one (no KL pair)
    per_step = grad_accum * processes
    steps = max_steps or max(1, math.ceil(epochs * max(1, n_batches // per_step)))
    return steps, steps * per_step / n_batches


def passes_warning(passes: float, steps: int, n_examples: int) -> str | None:
    """A sentence when the settings go over the same labels more than MAX_PASSES times."""
    if passes <= MAX_PASSES:
        return None
    return (f"These settings go over the same {n_examples} examples about {passes:.0f} times ({steps} steps): above "
            f"{MAX_PASSES} passes a model tends to memorise the labels instead of learning what they have in common. "
            "Lower max steps, or label more first.")


def step_seconds(metrics: list[dict]) -> float | None:
    """Median seconds per optimizer step from a run's metrics.jsonl lines (train split, consecutive steps), the
    first step left out (it also loads and warms up); None with fewer than two such gaps."""
    train = sorted((m["step"], m["time"]) for m in metrics if m.get("split", "train") == "train" and "time" in m
                   and m.get("site") is None)
    gaps = [(t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in zip(train, train[1:]) if s2 > s1 and s1 >= 1]
    return statistics.median(gaps) if len(gaps) >= 2 else None


def measured_speed(past: list[dict], model: str, algorithm: str) -> tuple[float, str] | None:
    """Seconds per example (one micro-batch example on one process) for `algorithm`, from earlier runs of the same
    model: each past entry is {name, model, algorithm, batch_size, grad_accum, step_s}. Runs of the same algorithm
    win; others are scaled by WORK. Returns (seconds per example, the run it came from) or None."""
    same_model = [p for p in past if p["model"] == model and p.get("step_s")]
    if not same_model:
        return None
    same = [p for p in same_model if p["algorithm"] == algorithm]
    p = (same or same_model)[0]                       # newest first: today's machine load
    per_example = p["step_s"] / (p["batch_size"] * p["grad_accum"])
    if not same:
        per_example *= work(algorithm) / work(p["algorithm"])
    return per_example, p["name"]


def first_guess_step_s(parameters: int, tokens_per_example: float, examples_per_step: int, algorithm: str,
                       device: str = "cpu") -> float:
    """Seconds per step before anything is measured: about 6 FLOPs per parameter and token for a forward and
    backward pass (LoRA saves little of it), at FIRST_GUESS_FLOPS."""
    flops = 6 * parameters * tokens_per_example * examples_per_step * work(algorithm)
    return flops / FIRST_GUESS_FLOPS[device]


def duration(seconds: float) -> str:
    """'40 s', '3 min', '1 h 20 min': as precise as an estimate deserves."""
    if seconds < 60:
        return f"{max(5, round(seconds / 5) * 5)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def estimate_line(steps: int, step_s: float, source: str | None) -> str:
    """The preview's sentence: the training steps' time and where the speed comes from."""
    where = (f"at the speed measured on this machine in run {source}" if source
             else "a first guess from the model's size: no run of this model has been timed on this machine yet")
    return (f"Time: about **{duration(steps * step_s)}** for {steps} steps ({where}; loading the model and the reference "
            "pass come on top).")


def algorithm_hint(pairs: int, good: int, bad: int, written: int) -> str:
    """One line: which algorithm fits the labels the project has (current labels, before any filter)."""
    have = ", ".join(f"{n} {what}" for n, what in ((pairs, "decided pairs"), (good, "good answers"),
                                                     (bad, "bad answers"), (written, "written answers")) if n)
    if pairs >= max(1, good + bad):
        return (f"Your labels: {have}. **DPO** fits pairs; **KTO** can use good/bad labels and pairs alike (a pair "
                "counts as one good and one bad answer).")
    if good and bad:
        return f"Your labels: {have}. **KTO** fits good/bad labels (it also uses the pairs)."
    if good or written:
        return (f"Your labels: {have}, no bad ones: **SFT** (or MinorSFT) imitates them; KTO and DPO need bad "
                "answers or pairs too.")
    if bad:
        return f"Your labels: {have} only; label some good answers or pairs before training."
    return "No labels yet: label answers on the Label page first (good/bad for KTO, pairs for DPO, writing for SFT)."
