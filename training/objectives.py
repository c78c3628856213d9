"""Objectives: map a batch's log-probs to (loss, batch scalars, per-instance values), using training/losses.py.

One function per algorithm of training/algorithms.py, which says what each needs (data kind, reference logits
every step for eps-DPO, KTO's mismatched KL pairs); all others use reference log-probs cached once before
training. The trainer loop is the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from training import losses as L
from training.config import JobConfig
from training.data import Batch
from training.modeling import LogpOutput, padded_response_logits


@dataclass
class StepInput:
    batch: Batch
    policy: LogpOutput           # the batch's sequences under the policy
    ref: torch.Tensor            # [K, S] reference log-probs (K = 1 except MRPO)
    beta: float                  # current global beta
    ref_out: LogpOutput | None = None      # eps-DPO: reference logits at response positions
    kl_policy: torch.Tensor | None = None  # KTO: [B] policy log-probs of mismatched pairs (no grad)
    kl_ref: torch.Tensor | None = None     # KTO: [B] reference log-probs of the same


@dataclass
class StepResult:
    loss: torch.Tensor
    scalars: dict[str, float]
    instances: list[dict] = field(default_factory=list)
    eps_steps_mean: float = 0.0  # eps-DPO: mean of s over the micro-batch


def _f(x: torch.Tensor) -> float:
    return float(x.detach().float().mean()) if x.numel() else float("nan")


def _instances(inp: StepInput, rows: range, side_losses: torch.Tensor, beta_i: torch.Tensor | float,
               ref: torch.Tensor) -> list[dict]:
    b, p = inp.batch, inp.policy
    n_ex = len(b.examples)
    out = []
    for k, s in enumerate(rows):
        ex = b.examples[s % n_ex]
        n = int(p.n_tokens[s])
        pl, rl = float(p.logps[s].detach()), float(ref[s])
        out.append({
            "example_id": ex.example_id, "task_id": ex.task_id, "site": ex.site, "side": b.side[s],
            "policy_logp": pl, "ref_logp": rl, "n_tokens": n, "m_theta": (pl - rl) / max(n, 1),
            "beta_i": float(beta_i[k]) if torch.is_tensor(beta_i) else float(beta_i),
            "loss": float(side_losses[k]),
        })
    return out


def _pair_scalars(pc, pr, cr, rr, losses, ref_c, ref_r, n_c, n_r) -> dict[str, float]:
    m_c = (pc.detach() - ref_c) / n_c.clamp(min=1)
    m_r = (pr.detach() - ref_r) / n_r.clamp(min=1)
    return {
        "loss": _f(losses), "rewards/chosen": _f(cr), "rewards/rejected": _f(rr),
        "rewards/margins": _f(cr - rr), "rewards/accuracies": _f((cr > rr).float()),
        "logps/chosen": _f(pc), "logps/rejected": _f(pr),
        "m_theta": _f(torch.cat([m_c, m_r])), "m_theta/chosen": _f(m_c), "m_theta/rejected": _f(m_r),
    }


def _split_pairs(inp: StepInput):
    B = len(inp.batch.examples)
    p = inp.policy
    return B, p.logps[:B], p.logps[B:], p.n_tokens[:B], p.n_tokens[B:]


# -- objectives ---------------------------------------------------------------------------------------------------
def sft(cfg: JobConfig, inp: StepInput) -> StepResult:
    p = inp.policy
    loss, per_example = L.sft_loss(p.logps, p.n_tokens, cfg.sft_reduction)
    ref = inp.ref[0]
    m = L.deviation(p.logps, ref, p.n_tokens)
    scalars = {"loss": float(loss.detach()), "logps/chosen": _f(p.logps), "m_theta": _f(m),
               "num_tokens": float(p.n_tokens.clamp(min=1).sum())}
    return StepResult(loss, scalars, _instances(inp, range(len(per_example)), per_example.detach(), cfg.beta, ref))


def minor_sft(cfg: JobConfig, inp: StepInput) -> StepResult:
    p = inp.policy
    ref = inp.ref[0]
    loss, per_example, coef = L.minor_sft_loss(p.logps, ref, p.n_tokens, cfg.beta, cfg.sft_reduction)
    m = L.deviation(p.logps, ref, p.n_tokens)
    scalars = {"loss": float(loss.detach()), "logps/chosen": _f(p.logps), "m_theta": _f(m), "minor/coef": _f(coef),
               "minor/coef_min": float(coef.min()), "minor/coef_max": float(coef.max()),
               "num_tokens": float(p.n_tokens.clamp(min=1).sum())}
    return StepResult(loss, scalars, _instances(inp, range(len(per_example)), per_example.detach(), cfg.beta, ref))


def dpo(cfg: JobConfig, inp: StepInput) -> StepResult:
    B, pc, pr, n_c, n_r = _split_pairs(inp)
    ref_c, ref_r = inp.ref[0, :B], inp.ref[0, B:]
    if cfg.loss_type == "ipo":  # IPO compares length-normalised log-probs
        losses, cr, rr = L.dpo_loss(pc / n_c, pr / n_r, ref_c / n_c, ref_r / n_r, cfg.beta, "ipo")
    else:
        losses, cr, rr = L.dpo_loss(pc, pr, ref_c, ref_r, cfg.beta, cfg.loss_type, cfg.label_smoothing)
    scalars = _pair_scalars(pc, pr, cr, rr, losses, ref_c, ref_r, n_c, n_r)
    inst = _instances(inp, range(2 * B), torch.cat([losses, losses]).detach(), cfg.beta, inp.ref[0])
    return StepResult(losses.mean(), scalars, inst)


def minor_dpo(cfg: JobConfig, inp: StepInput) -> StepResult:
    B, pc, pr, n_c, n_r = _split_pairs(inp)
    ref_c, ref_r = inp.ref[0, :B], inp.ref[0, B:]
    losses, cr, rr = L.minor_dpo_loss(pc, pr, ref_c, ref_r, cfg.beta)
    scalars = _pair_scalars(pc, pr, cr, rr, losses, ref_c, ref_r, n_c, n_r)
    scalars["minor/rejected_penalised"] = _f((rr > 0).float())   # share of pairs whose reject penalty is on
    inst = _instances(inp, range(2 * B), torch.cat([losses, losses]).detach(), cfg.beta, inp.ref[0])
    return StepResult(losses.mean(), scalars, inst)


def eps_dpo(cfg: JobConfig, inp: StepInput) -> StepResult:
    B, pc, pr, n_c, n_r = _split_pairs(inp)
    S = 2 * B
    ref_c, ref_r = inp.ref[0, :B], inp.ref[0, B:]
    zc, lab_c, m_c = padded_response_logits(inp.policy, slice(0, B), S)
    zr, lab_r, m_r = padded_response_logits(inp.policy, slice(B, S), S)
    rc, _, _ = padded_response_logits(inp.ref_out, slice(0, B), S)
    rr_, _, _ = padded_response_logits(inp.ref_out, slice(B, S), S)
    steps = L.eps_dpo_steps(zc, zr, rc, rr_, lab_c, lab_r, m_c, m_r, cfg.epsilon)
    losses, cr, rr, beta_i = L.eps_dpo_loss(pc, pr, ref_c, ref_r, steps, inp.beta, cfg.epsilon)
    scalars = _pair_scalars(pc, pr, cr, rr, losses, ref_c, ref_r, n_c, n_r)
    scalars.update({"kl/beta": inp.beta, "kl/avg_steps": _f(steps),
                    "kl/p_epsilon_steps": _f((steps > 0).float()), "kl/n_epsilon_steps": _f((steps < 0).float()),
                    "beta_i/mean": _f(beta_i)})
    inst = _instances(inp, range(S), torch.cat([losses, losses]).detach(), torch.cat([beta_i, beta_i]), inp.ref[0])
    return StepResult(losses.mean(), scalars, inst, eps_steps_mean=_f(steps))


def mrpo(cfg: JobConfig, inp: StepInput) -> StepResult:
    B, pc, pr, n_c, n_r = _split_pairs(inp)
    losses, cr, rr, info = L.mrpo_loss(pc, pr, inp.ref[:, :B], inp.ref[:, B:], cfg.beta, cfg.eta, cfg.mrpo_weights)
    # Rewards are against the virtual reference (what the loss sees); m_theta against the base like every other
    # algorithm (0 before the first update, comparable across runs); the deviation from the virtual one apart.
    scalars = _pair_scalars(pc, pr, cr, rr, losses, inp.ref[0, :B], inp.ref[0, B:], n_c, n_r)
    m_vref = torch.cat([L.deviation(pc, info["ref_chosen"], n_c), L.deviation(pr, info["ref_rejected"], n_r)])
    scalars["m_theta_vref"] = _f(m_vref)
    w = info["weights"].mean(-1)
    scalars.update({f"mrpo/weight_{k}": float(w[k]) for k in range(len(w))})
    scalars["mrpo/clipped_fraction"] = float(info["clipped_fraction"])
    inst = _instances(inp, range(2 * B), torch.cat([losses, losses]).detach(), cfg.beta, inp.ref[0])
    return StepResult(losses.mean(), scalars, inst)


def kto(cfg: JobConfig, inp: StepInput) -> StepResult:
    p = inp.policy
    ref = inp.ref[0]
    good = torch.tensor([ex.label for ex in inp.batch.examples], dtype=torch.bool, device=p.logps.device)
    idx_g, idx_b = good.nonzero().flatten(), (~good).nonzero().flatten()
    losses, cr, rr, kl = L.kto_loss(p.logps[idx_g], p.logps[idx_b], inp.kl_policy, ref[idx_g], ref[idx_b],
                                    inp.kl_ref, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    per_example = torch.empty(len(good), dtype=losses.dtype, device=losses.device)
    per_example[idx_g] = losses[: len(idx_g)].detach()
    per_example[idx_b] = losses[len(idx_g):].detach()
    m = L.deviation(p.logps, ref, p.n_tokens)
    kl_unclamped = _f(inp.kl_policy - inp.kl_ref)   # z0 before the clamp at 0: how far below 0 it would go
    scalars = {"loss": _f(losses), "kl": float(kl), "kl/unclamped": kl_unclamped,
               "rewards/chosen": _f(cr), "rewards/rejected": _f(rr),
               "rewards/margins": (_f(cr) - _f(rr)) if len(cr) and len(rr) else float("nan"),
               "logps/chosen": _f(p.logps[idx_g]), "logps/rejected": _f(p.logps[idx_b]),
               "count/desirable": float(len(idx_g)), "count/undesirable": float(len(idx_b)),
               "m_theta": _f(m), "m_theta/chosen": _f(m[idx_g]), "m_theta/rejected": _f(m[idx_b])}
    return StepResult(losses.mean(), scalars, _instances(inp, range(len(good)), per_example, cfg.beta, ref))


# One per name of training/algorithms.py (tests/test_losses.py checks that they match).
OBJECTIVES: dict[str, Callable[[JobConfig, StepInput], StepResult]] = {
    "sft": sft, "minor_sft": minor_sft, "dpo": dpo, "minor_dpo": minor_dpo, "eps_dpo": eps_dpo, "mrpo": mrpo,
    "kto": kto,
}
