"""Shared-prompt packing is an optimisation, never a change of result: packed log-probs, their gradients and the
losses of a packed run equal the plain padded computation."""
import pytest
import torch

from tests.jobdata import make_run
from tests.tiny import FAMILIES
from training.config import JobConfig, LoraConfig
from training.modeling import add_lora, load_model, load_tokenizer, packed_logps, response_logps
from training.trainer import Trainer


@pytest.fixture(scope="module", params=FAMILIES)
def model_and_tok(request, tiny_family):
    """A LoRA model of each tiny family: Llama, GPT-2 (learned positions, Conv1D), Qwen2."""
    model_dir = tiny_family(request.param)
    torch.manual_seed(0)
    model = add_lora(load_model(model_dir), LoraConfig(r=4, alpha=8))
    with torch.no_grad():   # a non-zero adapter, so the gradient check is about the adapter in use
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model, load_tokenizer(model_dir)


def test_packed_equals_padded_logps_and_gradients(model_and_tok):
    from training.data import collate

    model, tok = model_and_tok
    p1, p2 = tok("first question here")["input_ids"], tok("another, longer question about pumps")["input_ids"]
    r = [tok(t)["input_ids"] + [tok.eos_token_id] for t in ("yes", "no it is not", "maybe later today", "ok")]
    # a pair on p1, three answers on p2 (one shared with p1), in mixed order, and a one-token prompt
    parts = [(p1, r[0]), (p2, r[1]), (p1, r[1]), (p2, r[2]), (p2, r[3]), (p1[:1], r[2])]
    ids, attn, resp = collate(parts, tok.pad_token_id)
    plain = response_logps(model, ids, attn, resp, keep_logits=True)
    packed = packed_logps(model, parts, tok.pad_token_id, keep_logits=True)
    assert torch.allclose(packed.logps, plain.logps, atol=1e-4)
    assert torch.equal(packed.n_tokens, plain.n_tokens) and torch.equal(packed.seq_index, plain.seq_index)
    assert torch.equal(packed.labels, plain.labels)
    assert torch.allclose(packed.logits, plain.logits, atol=1e-4)

    weights = torch.linspace(-1, 1, len(parts))
    grads = []
    for out in (plain, packed):
        model.zero_grad()
        (out.logps * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-4), n
    model.zero_grad()


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "eps_dpo"])
def test_packed_run_has_the_losses_of_a_padded_run(tmp_path, tiny_model_dir, algorithm):
    losses = {}
    for pack in (True, False):
        run = make_run(tmp_path / f"{algorithm}-{pack}", tiny_model_dir, algorithm, max_steps=4, learning_rate=5e-2,
                       pack_prompts=pack)
        tr = Trainer(JobConfig.load(run / "config.json"), run).prepare()
        losses[pack] = [tr.train_step()[0]["loss"] for _ in range(4)]
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert losses[True][0] != pytest.approx(losses[True][-1], abs=1e-3)   # and it did train


def test_lean_head_matches_log_softmax_values_and_gradients():
    """The head that recomputes logits in backward gives the log-probs and gradients of the plain computation,
    across chunk borders, for the hidden states and for the head weight (full fine-tuning trains it)."""
    from training import modeling

    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(modeling._HeadLogps.CHUNK + 7, 16, requires_grad=True)
    labels = torch.randint(0, 50, (h.shape[0],))
    g = torch.randn(h.shape[0])
    lean, none = modeling.head_logps(head, h, labels)
    assert none is None
    (lean * g).sum().backward()
    gh, gw = h.grad.clone(), head.weight.grad.clone()
    h.grad, head.weight.grad = None, None
    plain, logits = modeling.head_logps(head, h, labels, keep_logits=True)
    assert logits.shape == (h.shape[0], 50)
    (plain * g).sum().backward()
    assert torch.allclose(lean, plain, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, head.weight.grad, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_cached_reference_equals_the_untrained_policy_in_bf16(tmp_path, tiny_model_dir, algorithm):
    """References are cached batch by batch in training's own layout, so before any update the policy is exactly
    the reference: rewards and m_theta are 0 and DPO's first loss is ln 2, also where bf16 rounds coarsely."""
    run = make_run(tmp_path / "r", tiny_model_dir, algorithm, max_steps=2, precision="bf16")
    tr = Trainer(JobConfig.load(run / "config.json"), run).prepare()
    scalars, instances = tr.train_step()
    assert scalars["m_theta"] == 0.0
    assert all(row["m_theta"] == 0.0 for row in instances)
    if algorithm == "dpo":
        assert scalars["loss"] == pytest.approx(0.693147, abs=1e-6) and scalars["rewards/margins"] == 0.0
