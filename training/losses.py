"""Pure loss functions: summed response log-probs in, per-example tensors out. No model inside, so each is checked
against docs/losses.md's float64 test vectors and against other implementations (TRL, the official eps-DPO and
MRPO trainers). Conventions: `log pi(y|x)` is the SUM of per-token log-probs over response tokens; rewards are
detached; the caller averages per-example losses over the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.algorithms import kto_classes_problem

Tensor = torch.Tensor


def deviation(policy_logps: Tensor, ref_logps: Tensor, n_tokens: Tensor) -> Tensor:
    """m_theta(x, y) = (log pi_theta(y|x) - log pi_ref(y|x)) / |y|, per instance (detached)."""
    return ((policy_logps - ref_logps) / n_tokens.clamp(min=1)).detach()


# -- 1. SFT ---------------------------------------------------------------------------------------------------
def sft_loss(logps: Tensor, n_tokens: Tensor, reduction: str = "token_mean") -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of the responses, from their summed log-probs [B] and token counts [B].

    Returns (loss, per_example) where per_example is each sequence's mean NLL. token_mean divides the summed NLL
    of the batch by its response-token count (long answers weigh more); seq_mean averages per-sequence means.
    """
    nll = -logps
    n = n_tokens.clamp(min=1)
    per_example = nll / n
    if reduction == "token_mean":
        loss = nll.sum() / n.sum()
    elif reduction == "seq_mean":
        loss = per_example.mean()
    else:
        raise ValueError(f"unknown SFT reduction {reduction!r}")
    return loss, per_example


# -- 2. MinorSFT (arXiv 2408.10642) -------------------------------------------------------------------------------
def minor_sft_loss(policy_logps: Tensor, ref_logps: Tensor, n_tokens: Tensor, beta: float,
                   reduction: str = "seq_mean") -> tuple[Tensor, Tensor, Tensor]:
    """c_i = 2 sigma(-beta Delta_i) (detached) times the NLL. Returns (loss, per_example, coef).

    Its gradient equals that of -(2/(beta m_i)) log sigma(beta Delta_i): SFT that slows down for examples the policy
    already prefers over the reference. At Delta = 0, c = 1 and it is SFT with the same `reduction` (sft_loss's):
    per_example is c_i times the sequence's mean NLL.
    """
    delta = policy_logps - ref_logps
    coef = (2.0 * torch.sigmoid(-beta * delta)).detach()
    n = n_tokens.to(policy_logps.dtype).clamp(min=1)
    per_example = coef * (-policy_logps / n)
    if reduction == "seq_mean":
        loss = per_example.mean()
    elif reduction == "token_mean":
        loss = (coef * -policy_logps).sum() / n.sum()
    else:
        raise ValueError(f"unknown SFT reduction {reduction!r}")
    return loss, per_example, coef


# -- 3. DPO and variants (Rafailov et al. 2023; IPO Azar et al. 2023; cDPO) ----------------------------------------
def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float | Tensor, loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (losses, chosen_rewards, rejected_rewards). For ipo the caller passes length-normalised log-probs.

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).
    sigmoid: -log sigma(beta h), with cDPO smoothing eps: -(1-eps) log sigma(beta h) - eps log sigma(-beta h).
    ipo: (h - 1/(2 beta))^2.  hinge: max(0, 1 - beta h).  `beta` may be a per-example tensor (eps-DPO).
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    chosen_rewards = (beta * chosen_logratio).detach()
    rejected_rewards = (beta * rejected_logratio).detach()
    return losses, chosen_rewards, rejected_rewards


# -- 3b. MinorDPO (arXiv 2408.09834, the DPO variant the MinorSFT paper 2408.10642 derives from) ------------------
def minor_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                   beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """-log sigma(beta (r_w - max(0, r_l))), r = log pi - log pi_ref. Returns (losses, chosen_rewards,
    rejected_rewards) as dpo_loss does.

    The reject penalty is one-sided: once the rejected answer is less likely than under the reference (r_l <= 0)
    it gets no gradient, so the policy is not pushed further from the reference than the pair needs.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio.clamp(min=0)))
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


# -- 4. eps-DPO (arXiv 2502.13177; follows the official trainer) ---------------------------------------------------
def _summed_logps(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (logps * mask.to(logps.dtype)).sum(-1)


@torch.no_grad()
def eps_dpo_steps(policy_logits_chosen: Tensor, policy_logits_rejected: Tensor, ref_logits_chosen: Tensor,
                  ref_logits_rejected: Tensor, labels_chosen: Tensor, labels_rejected: Tensor,
                  mask_chosen: Tensor, mask_rejected: Tensor, epsilon: float) -> Tensor:
    """Per-instance direction s_i in {-1, 0, +1} for beta.

    Logits are [B, T, V] at response positions (aligned with labels [B, T] and masks [B, T]). The policy at
    beta/(1+eps) has logits z+ = (1+eps) z_theta - eps z_ref; at beta/(1-eps), z- = (1-eps) z_theta + eps z_ref.
    With l = logp(chosen) - logp(rejected) under each: s = +1 if l+ > l > l- (a smaller beta would help: relax),
    s = -1 if l- > l > l+ (tighten), else 0.
    """
    zc, zr = policy_logits_chosen.detach().float(), policy_logits_rejected.detach().float()
    rc, rr = ref_logits_chosen.float(), ref_logits_rejected.float()

    def margin(c: Tensor, r: Tensor) -> Tensor:
        return _summed_logps(c, labels_chosen, mask_chosen) - _summed_logps(r, labels_rejected, mask_rejected)

    l0 = margin(zc, zr)
    lp = margin((1 + epsilon) * zc - epsilon * rc, (1 + epsilon) * zr - epsilon * rr)
    lm = margin((1 - epsilon) * zc + epsilon * rc, (1 - epsilon) * zr + epsilon * rr)
    up = (lp > l0) & (l0 > lm)
    down = (lm > l0) & (l0 > lp)
    return up.to(l0.dtype) - down.to(l0.dtype)


def eps_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                 steps: Tensor, beta: float, epsilon: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DPO sigmoid loss with per-instance beta_i = beta / (1 + eps s_i). Returns (losses, chosen_rewards,
    rejected_rewards, beta_i); rewards use beta_i."""
    beta_i = beta / (1 + epsilon * steps.to(policy_chosen.dtype))
    losses, cr, rr = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta_i)
    return losses, cr, rr, beta_i.detach()


def eps_dpo_update_beta(beta: float, mean_steps: float, epsilon: float) -> float:
    """Global beta update at an optimizer step: beta <- beta / (1 + eps * mean_steps), where mean_steps is the
    accumulated mean of s over the step's micro-batches (sum of per-micro-batch means / grad_accum), averaged
    over processes. Evaluation never calls this."""
    return beta / (1 + epsilon * mean_steps)


# -- 5. MRPO, multiple references (arXiv 2405.16388) ---------------------------------------------------------------
def mrpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
              beta: float, eta: float = 0.1, weights: list[float] | Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, dict]:
    """DPO against a virtual reference combining K references. ref_* are [K, B], the primary (base) first.

    1. CTRO: clip each auxiliary's logps to within a relative band eta_w/eta_l of the primary's.
    2. ARWC weights (default): w_k = (S - |a_k|) / ((K-1) S), a_k the reference margin before clipping,
       S = sum |a_k| + 1e-6: the official K = 2 rule; for K >= 3 this project's extension (docs/losses.md).
    3. log pi~ = -logsumexp_k(log w_k - p_k) per side (weighted harmonic mean in probability space).
    Returns (losses, chosen_rewards, rejected_rewards, info) with info: weights [K, B], clipped fraction, the
    virtual reference logps.
    """
    K = ref_chosen.shape[0]
    p0w, p0l = ref_chosen[0], ref_rejected[0]
    cw, cl = [p0w], [p0l]
    n_clipped = torch.zeros((), dtype=ref_chosen.dtype, device=ref_chosen.device)
    for k in range(1, K):
        pkw, pkl = ref_chosen[k], ref_rejected[k]
        if eta >= 0:
            bw, bl = (p0w + pkw) / 2, (p0l + pkl) / 2
            denom = bw.abs() + bl.abs()
            eta_w, eta_l = eta * bw.abs() / denom, eta * bl.abs() / denom
        else:
            eta_w = eta_l = torch.full_like(p0w, abs(eta))
        # p0 is negative (a log-prob), so (1+eta) p0 is the lower bound and (1-eta) p0 the upper.
        new_w = torch.clamp(pkw, min=(1 + eta_w) * p0w, max=(1 - eta_w) * p0w)
        new_l = torch.clamp(pkl, min=(1 + eta_l) * p0l, max=(1 - eta_l) * p0l)
        n_clipped = n_clipped + (new_w != pkw).sum() + (new_l != pkl).sum()
        cw.append(new_w)
        cl.append(new_l)
    pw, pl = torch.stack(cw), torch.stack(cl)
    if weights is None:
        # As in the official trainer, the weights come from the references' own (unclipped) margins.
        a = (ref_chosen - ref_rejected).abs()
        S = a.sum(0, keepdim=True) + 1e-6
        w = (S - a) / ((K - 1) * S)
    else:   # fixed weights, positive (JobConfig refuses others), normalised to sum to 1
        w = torch.as_tensor(weights, dtype=pw.dtype, device=pw.device).view(K, 1).expand_as(pw)
        w = w / w.sum(0, keepdim=True)
    log_w = torch.log(w)
    virt_w = -torch.logsumexp(log_w - pw, dim=0)
    virt_l = -torch.logsumexp(log_w - pl, dim=0)
    losses, cr, rr = dpo_loss(policy_chosen, policy_rejected, virt_w, virt_l, beta)
    info = {
        "weights": w.detach(),
        "clipped_fraction": (n_clipped / max(1, 2 * (K - 1) * p0w.numel())).detach(),
        "ref_chosen": virt_w.detach(),
        "ref_rejected": virt_l.detach(),
    }
    return losses, cr, rr, info


# -- 6. KTO (arXiv 2402.01306) ---------------------------------------------------------------------------------------
def kto_kl(policy_kl: Tensor, ref_kl: Tensor) -> Tensor:
    """z_0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))) over mismatched (prompt, other answer) pairs,
    detached. Callers with several processes average the mean across processes before the clamp."""
    return (policy_kl - ref_kl).mean().clamp(min=0).detach()


def kto_loss(policy_chosen: Tensor, policy_rejected: Tensor, policy_kl: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, ref_kl: Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Desirable: lambda_D (1 - sigma(beta (r - z0))); undesirable: lambda_U (1 - sigma(beta (z0 - r))), with
    r = log pi - log pi_ref. `*_chosen` are the desirable examples, `*_rejected` the undesirable ones (either may
    be empty). Returns (losses [n_D + n_U], chosen_rewards, rejected_rewards, kl)."""
    kl = kto_kl(policy_kl, ref_kl)
    r_c = policy_chosen - ref_chosen
    r_r = policy_rejected - ref_rejected
    loss_c = desirable_weight * (1 - torch.sigmoid(beta * (r_c - kl)))
    loss_r = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r_r)))
    losses = torch.cat([loss_c, loss_r])
    return losses, (beta * r_c).detach(), (beta * r_r).detach(), kl


def kto_desirable_weight(n_desirable: int, n_undesirable: int, undesirable_weight: float = 1.0) -> float:
    """Suggested lambda_D so that lambda_D n_D / (lambda_U n_U) lies in [1, 4/3] (KTO paper's guidance):
    the smallest such value, i.e. ratio 1, rounded up to 2 decimals."""
    problem = kto_classes_problem(n_desirable, n_undesirable)
    if problem:
        raise ValueError(problem)

    return math.ceil(100 * undesirable_weight * n_undesirable / n_desirable) / 100
