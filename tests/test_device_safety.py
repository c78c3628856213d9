"""Every tensor an objective or the log-prob code creates lives on its inputs' device. No GPU is needed to check
this: inside `torch.device("meta")` a factory call without `device=` makes a meta tensor, and mixing it with the CPU inputs
fails, just as a CPU tensor mixed with CUDA inputs fails on a GPU."""
import pytest
import torch

from tests.tiny import FAMILIES
from training.config import JobConfig, LoraConfig
from training.data import Example, collate, make_batch
from training.modeling import LogpOutput, add_lora, load_model, packed_logps, response_logps
from training.objectives import OBJECTIVES, StepInput

ALGORITHMS = {"sft": "sft", "minor_sft": "sft", "dpo": "pairs", "minor_dpo": "pairs", "eps_dpo": "pairs", "mrpo": "pairs",
              "kto": "unpaired"}


def _logps(n_seq: int, n_tok: int, vocab: int = 11) -> LogpOutput:
    """Per-token values for n_seq sequences of n_tok response tokens each, on the CPU."""
    g = torch.Generator().manual_seed(n_seq)
    seq_index = torch.arange(n_seq).repeat_interleave(n_tok)
    token_logps = -torch.rand(n_seq * n_tok, generator=g) - 0.1
    logits = torch.randn(n_seq * n_tok, vocab, generator=g)
    labels = torch.randint(0, vocab, (n_seq * n_tok,), generator=g)
    logps = torch.zeros(n_seq).index_add(0, seq_index, token_logps)
    return LogpOutput(logps, torch.full((n_seq,), n_tok), token_logps, seq_index, logits, labels)


def step_input(algorithm: str) -> tuple[JobConfig, StepInput]:
    kind = ALGORITHMS[algorithm]
    examples = [Example(i, f"ex{i}", None, None, [1, 2, 3], [[4, 5], [6]],
                        label=bool(i % 2) if kind == "unpaired" else None) for i in range(4)]
    batch = make_batch(examples, kind, pad_id=0)
    S = len(batch.parts)
    refs = ["other-run"] if algorithm == "mrpo" else []
    inp = StepInput(batch=batch, policy=_logps(S, 3), ref=-torch.rand(1 + len(refs), S) * 3, beta=0.1)
    if algorithm == "eps_dpo":
        inp.ref_out = _logps(S, 3)
    if algorithm == "kto":
        inp.kl_policy, inp.kl_ref = -torch.rand(4), -torch.rand(4)
    cfg = JobConfig(algorithm=algorithm, model="m", references=refs, mrpo_weights=[0.7, 0.3] if refs else None)
    return cfg, inp


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_objectives_create_tensors_on_the_inputs_device(algorithm):
    assert set(ALGORITHMS) == set(OBJECTIVES)
    cfg, inp = step_input(algorithm)
    with torch.device("meta"):
        result = OBJECTIVES[algorithm](cfg, inp)
    assert result.loss.device.type == "cpu"
    assert torch.isfinite(result.loss) and result.instances


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("packed", [True, False])
def test_log_probs_and_their_gradients_stay_on_the_models_device(tiny_family, family, packed):
    """The forward (padded, or packed with its mask built on the device) and the lean head's backward."""
    model = add_lora(load_model(tiny_family(family)), LoraConfig(r=4, alpha=8))
    parts = [([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([7, 8], [9, 10, 11])]
    ids, attn, resp = collate(parts, 0)
    with torch.device("meta"):
        out = packed_logps(model, parts, 0) if packed else response_logps(model, ids, attn, resp)
        out.logps.sum().backward()
    assert out.logps.device.type == "cpu" and torch.isfinite(out.logps).all()
    assert all(p.grad is not None and p.grad.device.type == "cpu" for p in model.parameters() if p.requires_grad)
