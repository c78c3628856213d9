"""Every test vector of docs/losses.md, in float64, plus the gradients it lists."""
import pytest
import torch

from training import losses as L

D = torch.float64


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=D, requires_grad=grad)


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=D)
    b = torch.as_tensor(b, dtype=D)
    assert torch.allclose(a, b, atol=tol, rtol=0), f"{a.tolist()} != {b.tolist()}"


def test_sft_token_and_seq_mean():
    logps = torch.tensor([[-0.5, -1.0, -1.5], [-2.0, -0.2, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    summed, n_tokens = (logps * mask).sum(-1), mask.sum(-1)
    close(L.sft_loss(summed, n_tokens, "token_mean")[0], 1.04)
    close(L.sft_loss(summed, n_tokens, "seq_mean")[0], 1.05)


@pytest.mark.parametrize("reduction, expected", [("token_mean", 1.04), ("seq_mean", 1.05)])
def test_training_uses_the_tested_sft_loss(reduction, expected):
    """objectives.sft (what the trainer calls) gives losses.sft_loss's value on the same response tokens."""
    from training.config import JobConfig
    from training.data import Batch, Example
    from training.modeling import LogpOutput
    from training.objectives import StepInput, sft

    token_logps = t(-0.5, -1.0, -1.5, -2.0, -0.2)
    seq_index = torch.tensor([0, 0, 0, 1, 1])
    logps = torch.zeros(2, dtype=D).index_add(0, seq_index, token_logps)
    n_tokens = torch.tensor([3, 2])
    policy = LogpOutput(logps, n_tokens, token_logps, seq_index, None, torch.zeros(5, dtype=torch.long))
    examples = [Example(i, str(i), None, None, [1], [[2, 3]]) for i in range(2)]
    batch = Batch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), torch.ones(2, 4), examples, ["sft", "sft"])
    inp = StepInput(batch=batch, policy=policy, ref=logps.detach()[None], beta=0.1)
    loss = sft(JobConfig(algorithm="sft", model="m", sft_reduction=reduction), inp).loss
    close(loss, L.sft_loss(logps, n_tokens, reduction)[0], tol=0)
    close(loss, expected)


def test_every_algorithm_has_an_objective():
    from training import algorithms
    from training.objectives import OBJECTIVES

    assert set(OBJECTIVES) == set(algorithms.NAMES)


def test_minor_sft_vector_and_gradient():
    pol = t(-10.0, grad=True)
    loss, losses, coef = L.minor_sft_loss(pol, t(-11.0), t(5.0), beta=0.1)
    close(coef, [0.950042])
    close(losses, [1.900083])
    close(L.minor_sft_loss(pol, t(-11.0), t(5.0), 0.1, "token_mean")[0], 1.900083)   # one sequence: the same
    loss.backward()
    close(pol.grad, [-0.190008])
    close(L.deviation(pol, t(-11.0), t(5.0)), [0.2])


def test_minor_sft_equals_seq_sft_at_zero_delta():
    pol = t(-10.0, grad=True)
    loss, losses, coef = L.minor_sft_loss(pol, t(-10.0), t(5.0), beta=0.1)
    loss.backward()
    close(coef, [1.0])
    close(pol.grad, [-0.2])


def test_minor_sft_gradient_matches_its_closed_form():
    # grad of -(2/(beta m)) log sigma(beta Delta) with respect to log pi_theta
    beta, m = 0.1, 5.0
    pol = t(-10.0, grad=True)
    (-(2 / (beta * m)) * torch.nn.functional.logsigmoid(beta * (pol - t(-11.0)))).sum().backward()
    g_ref = pol.grad.clone()
    pol2 = t(-10.0, grad=True)
    L.minor_sft_loss(pol2, t(-11.0), t(m), beta)[0].backward()
    close(pol2.grad, g_ref)


@pytest.mark.parametrize("reduction", ["seq_mean", "token_mean"])
def test_sft_and_minor_sft_give_equal_losses_at_zero_delta_with_the_default_reduction(reduction):
    """The paper's comparison: MinorSFT differs from SFT only by c_i, so with Delta = 0 (step 1, the policy is the
    reference) both objectives as the trainer calls them give the same loss and gradient, by default and for
    either reduction."""
    from training.config import JobConfig
    from training.data import Batch, Example
    from training.modeling import LogpOutput
    from training.objectives import StepInput, minor_sft, sft

    assert JobConfig().sft_reduction == "seq_mean"
    results = {}
    for name, objective in (("sft", sft), ("minor_sft", minor_sft)):
        token_logps = t(-0.5, -1.0, -1.5, -2.0, -0.2, grad=True)
        logps = torch.zeros(2, dtype=D).index_add(0, torch.tensor([0, 0, 0, 1, 1]), token_logps)
        policy = LogpOutput(logps, torch.tensor([3, 2]), token_logps, torch.tensor([0, 0, 0, 1, 1]), None,
                            torch.zeros(5, dtype=torch.long))
        examples = [Example(i, str(i), None, None, [1], [[2, 3]]) for i in range(2)]
        batch = Batch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), torch.ones(2, 4), examples, ["sft"] * 2)
        inp = StepInput(batch=batch, policy=policy, ref=logps.detach()[None], beta=0.1)
        cfg = JobConfig(algorithm=name, model="m") if reduction == "seq_mean" else \
            JobConfig(algorithm=name, model="m", sft_reduction=reduction)
        loss = objective(cfg, inp).loss
        loss.backward()
        results[name] = (loss.detach(), token_logps.grad.clone())
    close(results["sft"][0], results["minor_sft"][0], tol=1e-15)
    close(results["sft"][0], 1.05 if reduction == "seq_mean" else 1.04)
    close(results["sft"][1], results["minor_sft"][1], tol=1e-15)


def test_minor_dpo_vectors_and_gradients():
    """docs/losses.md's MinorDPO rows: rejected below the reference (r_l = -1) gets no penalty or gradient;
    above it (r_l = +0.5) MinorDPO is DPO."""
    pc, pr = t(-10.0, grad=True), t(-12.0, grad=True)
    losses, cr, rr = L.minor_dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.1)
    close(losses, [0.644397])
    close(cr, [0.1])
    close(rr, [-0.1])
    losses.sum().backward()
    close(pc.grad, [-0.047502])
    close(pr.grad, [0.0], tol=0)
    pc, pr = t(-10.0, grad=True), t(-10.5, grad=True)
    losses, _, rr = L.minor_dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.1)
    close(losses, [0.668460])
    close(rr, [0.05])
    close(losses, L.dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.1)[0], tol=1e-15)
    losses.sum().backward()
    close(pc.grad, [-0.048750])
    close(pr.grad, [0.048750])


def test_mrpo_fixed_weights_are_normalised():
    ref_c = torch.tensor([[-11.0], [-10.5]], dtype=D)
    ref_r = torch.tensor([[-11.5], [-13.0]], dtype=D)
    a = L.mrpo_loss(t(-10.0), t(-12.0), ref_c, ref_r, 0.1, eta=-0.1, weights=[0.5, 0.5])
    b = L.mrpo_loss(t(-10.0), t(-12.0), ref_c, ref_r, 0.1, eta=-0.1, weights=[3.0, 3.0])
    close(a[0], b[0], tol=1e-15)
    close(b[3]["weights"][:, 0], [0.5, 0.5], tol=1e-15)


def test_dpo_sigmoid_vector_and_gradients():
    pc, pr = t(-10.0, grad=True), t(-12.0, grad=True)
    losses, cr, rr = L.dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.1)
    close(losses, [0.598139])
    close(cr, [0.1])
    close(rr, [-0.1])
    losses.sum().backward()
    close(pc.grad, [-0.045017])
    close(pr.grad, [0.045017])


def test_cdpo_and_hinge():
    args = (t(-10.0), t(-12.0), t(-11.0), t(-11.0))
    close(L.dpo_loss(*args, beta=0.1, label_smoothing=0.1)[0], [0.618139])
    close(L.dpo_loss(*args, beta=0.1, loss_type="hinge")[0], [0.8])


def test_ipo_uses_length_normalised_logps():
    losses, _, _ = L.dpo_loss(t(-10.0 / 5), t(-12.0 / 6), t(-11.0 / 5), t(-11.0 / 6), beta=0.1, loss_type="ipo")
    close(losses, [21.467778])


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError):
        L.dpo_loss(t(-1.0), t(-1.0), t(-1.0), t(-1.0), 0.1, loss_type="nope")


@pytest.mark.parametrize("s,expected", [(1, 0.599031), (-1, 0.597230), (0, 0.598139)])
def test_eps_dpo_loss(s, expected):
    # h = 2: chosen log-ratio +1, rejected log-ratio -1
    losses, cr, rr, beta_i = L.eps_dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), t(float(s)), 0.1, 0.01)
    close(losses, [expected])
    close(beta_i, [0.1 / (1 + 0.01 * s)])
    close(cr, beta_i * 1.0)


def test_eps_dpo_beta_update():
    steps = [1, 1, -1, 0]
    close(L.eps_dpo_update_beta(0.1, sum(steps) / 4, 0.01), 0.0997506)
    # the same as two micro-batches [1,1], [-1,0] with grad_accum 2
    acc = (sum([1, 1]) / 2) / 2 + (sum([-1, 0]) / 2) / 2
    close(L.eps_dpo_update_beta(0.1, acc, 0.01), 0.0997506)


# V=3, two-token responses; rows: logits predicting response token 1, then token 2.
EPS_PAIRS = [
    ([[3.1, -0.6, -4.4], [1.1, -2.2, -2.8]], [[3.1, -0.6, -4.4], [-0.8, -1.2, 0.4]],
     [[-1.7, 2.2, -2.1], [0.2, -1.1, 0.7]], [[-1.7, 2.2, -2.1], [2.9, 1.9, 1.5]]),
    ([[-2.7, 1.8, 1.5], [0.1, 0.4, 1.1]], [[-2.7, 1.8, 1.5], [2.0, -0.9, 0.9]],
     [[-2.0, 1.4, -1.5], [-1.3, -1.3, -0.3]], [[-2.0, 1.4, -1.5], [-0.3, -0.4, -1.2]]),
    ([[4.0, -0.9, 0.1], [-3.0, 1.7, -0.1]], [[4.0, -0.9, 0.1], [0.9, -0.9, -1.0]],
     [[2.8, -1.2, -0.3], [1.7, -1.3, -2.6]], [[2.8, -1.2, -0.3], [-3.4, -3.5, 0.9]]),
]


def test_eps_dpo_steps_from_logits():
    pc, pr, rc, rr = (torch.tensor([p[i] for p in EPS_PAIRS], dtype=D) for i in range(4))
    lab_c = torch.tensor([[0, 1]] * 3)
    lab_r = torch.tensor([[2, 0]] * 3)
    mask = torch.ones(3, 2)
    steps = L.eps_dpo_steps(pc, pr, rc, rr, lab_c, lab_r, mask, mask, epsilon=0.01)
    close(steps, [1, -1, 0])
    logp = lambda z, lab: L._summed_logps(z, lab, mask).double()  # noqa: E731
    close(logp(pc, lab_c), [-3.380516, -6.383691, -0.188064])
    close(logp(pr, lab_r), [-9.132486, -1.188504, -4.201048])
    close(logp(rc, lab_c), [-6.305264, -5.036150, -3.122868])
    close(logp(rr, lab_r), [-4.812262, -3.822562, -7.486956])
    losses, *_ = L.eps_dpo_loss(logp(pc, lab_c), logp(pr, lab_r), logp(rc, lab_c), logp(rr, lab_r), steps, 0.1, 0.01)
    close(losses, [0.397471, 0.914322, 0.710856])


def test_mrpo_adaptive_k2():
    ref_c = torch.tensor([[-11.0], [-10.5]], dtype=D)
    ref_r = torch.tensor([[-11.5], [-13.0]], dtype=D)
    losses, cr, rr, info = L.mrpo_loss(t(-10.0), t(-12.0), ref_c, ref_r, beta=0.1, eta=0.1)
    close(info["weights"][0], [0.833333])
    close(info["ref_chosen"], [-10.932173])
    close(info["ref_rejected"], [-11.631765])
    close(losses, [0.630239])
    assert info["clipped_fraction"].item() > 0   # aux rejected -13 was clipped to -12.1125


def test_mrpo_clip_value():
    # the clipped auxiliary rejected logp: recover it from the virtual reference with known weights
    ref_c = torch.tensor([[-11.0], [-10.5]], dtype=D)
    ref_r = torch.tensor([[-11.5], [-13.0]], dtype=D)
    w = torch.tensor([0.833333333333, 1 - 0.833333333333], dtype=D)
    _, _, _, info = L.mrpo_loss(t(-10.0), t(-12.0), ref_c, ref_r, 0.1, 0.1, weights=w)
    virt = info["ref_rejected"]
    # -virt = logsumexp(log w - p): solve for p_aux
    p_aux = torch.log(w[1]) - torch.log(torch.exp(-virt) - w[0] * torch.exp(torch.tensor(11.5, dtype=D)))
    close(p_aux, [-12.1125], tol=1e-5)


def test_mrpo_fixed_weights_and_fixed_eta():
    ref_c = torch.tensor([[-11.0], [-10.5]], dtype=D)
    ref_r = torch.tensor([[-11.5], [-13.0]], dtype=D)
    losses, _, _, info = L.mrpo_loss(t(-10.0), t(-12.0), ref_c, ref_r, 0.1, eta=-0.1, weights=[0.5, 0.5])
    close(info["ref_chosen"], [-10.780930])
    close(info["ref_rejected"], [-12.231933])
    close(losses, [0.666074])


def test_kto_vector():
    losses, cr, rr, kl = L.kto_loss(t(-10.0), t(-12.0), t(-20.0, -19.0), t(-11.0), t(-11.0), t(-20.5, -19.2), 0.1)
    close(kl, 0.35)
    close(losses, [0.483756, 0.466301])
    close(losses.mean(), 0.475028)
    close(cr, [0.1])
    close(rr, [-0.1])


def test_kto_kl_is_clamped_at_zero():
    losses, _, _, kl = L.kto_loss(t(-10.0), t(-12.0), t(-21.0, -19.5), t(-11.0), t(-11.0), t(-20.5, -19.2), 0.1)
    close(kl, 0.0)
    close(losses, [0.475021, 0.475021])


def test_kto_desirable_weight_suggestion():
    lam = L.kto_desirable_weight(n_desirable=300, n_undesirable=100)
    assert 1 <= lam * 300 / 100 <= 4 / 3
    with pytest.raises(ValueError):
        L.kto_desirable_weight(10, 0)
