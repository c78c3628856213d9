"""Pre-flight knows the model before it is loaded: the layers LoRA will wrap and how many parameters train
(built on the meta device from config.json), what the architecture cannot do, what this machine cannot run, and
how much memory the job needs."""
import pandas as pd
import pytest
import torch

from app.preflight import check, estimate_memory_gb
from tests.jobdata import data_for
from training.config import ConfigError, JobConfig, LoraConfig
from training.modeling import add_lora, load_model, plan_model


def preflight(tmp_path, model_dir, **settings):
    cfg = JobConfig(algorithm="dpo", model=str(model_dir), batch_size=2, **settings)
    return check(cfg, data_for("dpo"), tmp_path)


@pytest.mark.parametrize("family, modules", [("gpt2", ["c_attn", "c_fc", "c_proj"]),
                                             ("qwen2", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                        "up_proj", "v_proj"])])
def test_preflight_names_the_layers_lora_wraps_and_counts_what_trains(tmp_path, tiny_family, family, modules):
    r = preflight(tmp_path, tiny_family(family))
    assert r["ok"], r["problems"]
    assert r["facts"]["lora_modules"] == modules
    model = add_lora(load_model(tiny_family(family)), LoraConfig())      # what the job will train
    assert r["facts"]["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lora_targets_the_model_lacks_are_a_sentence_naming_its_layers(tmp_path, tiny_family):
    r = preflight(tmp_path, tiny_family("gpt2"), lora=LoraConfig(target_modules=["q_proj", "v_proj"]))
    assert r["problems"] == ["None of the LoRA target modules (q_proj, v_proj) is in this GPT2LMHeadModel; its "
                             "linear layers are c_attn, c_fc, c_proj. Leave target_modules unset to train all of them."]
    with pytest.raises(ConfigError, match="its linear layers are c_attn, c_fc, c_proj"):   # and the job says the same
        add_lora(load_model(tiny_family("gpt2")), LoraConfig(target_modules=["q_proj", "v_proj"]))


def test_an_architecture_that_cannot_pack_prompts_is_a_warning(tmp_path, tiny_family):
    r = preflight(tmp_path, tiny_family("bloom"))
    assert r["ok"] and any("prompts are not packed" in w for w in r["warnings"])
    assert not any("packed" in w for w in preflight(tmp_path, tiny_family("bloom"), pack_prompts=False)["warnings"])


def test_4bit_is_refused_with_a_sentence_where_it_cannot_run(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(ConfigError, match="turn LoRA on"):
        JobConfig(model="m", lora=None, quantization="4bit").validate()
    if not torch.cuda.is_available():
        problems = preflight(tmp_path, tiny_model_dir, quantization="4bit")["problems"]
        assert any("needs an NVIDIA GPU with CUDA" in p for p in problems)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    problems = preflight(tmp_path, tiny_model_dir, quantization="4bit")["problems"]
    assert any("needs the bitsandbytes package: pip install bitsandbytes" in p for p in problems)
    with pytest.raises(ConfigError, match="bitsandbytes"):                  # the job refuses with the same words
        load_model(tiny_model_dir, quantization="4bit")


QWEN25 = {"0.5B": dict(hidden_size=896, num_hidden_layers=24, intermediate_size=4864, vocab_size=151936,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
          "1.5B": dict(hidden_size=1536, num_hidden_layers=28, intermediate_size=8960, vocab_size=151936,
                       num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
          "7B": dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, vocab_size=152064,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)}


@pytest.mark.parametrize("size, P, Q, T, lora, four_bit, full, checkpointed", [
    ("0.5B", 494_032_768, 357_826_560, 4_399_104, 9.0929, 7.5681, 14.9510, 2.6924),
    ("1.5B", 1_543_714_304, 1_310_195_712, 9_232_384, 20.4154, 15.3627, 38.7923, 7.5305),
    ("7B", 7_615_616_512, 6_525_288_448, 20_185_088, 63.6688, 38.6496, 154.7332, 33.6040),
])
def test_memory_estimate_follows_its_formula_for_real_model_sizes(tmp_path, size, P, Q, T, lora, four_bit, full,
                                                                   checkpointed):
    """Qwen2.5 shapes (config.json only; no weights). By hand, per layer with q = heads x 128 (x 64 for 0.5B) and
    kv = kv_heads x head_dim: linear weights h q + 2 h kv + q h + 3 h I, biases q + 2 kv, norms 2 h; plus the
    embedding V h (twice when untied) and a final norm h. LoRA r=8 on all seven linear layers: 8 (in + out) each.
    E.g. 0.5B: Q = 24 (2*896*896 + 2*896*128 + 3*896*4864) = 357,826,560; P = Q + 151936*896 + 24 (896 + 256)
    + 24*2*896 + 896 = 494,032,768; T = 24*8*(2*1792 + 2*1024 + 3*5760) = 4,399,104.
    DPO, batch 4, max_length 512: N = 4096 tokens, activations N L h 80 = 7,046,430,720 bytes for 0.5B. Then
    LoRA fp32 = 4P + 16T + act = 9.0929 GB; 4-bit = 0.5Q + 2(P-Q) + 16T + act = 7.5681 GB; full fine-tuning =
    16P + act = 14.9510 GB; LoRA with gradient checkpointing = 4P + 16T + N h (4L + 80) = 2.6924 GB."""
    from transformers import Qwen2Config

    Qwen2Config(**QWEN25[size]).save_pretrained(tmp_path)
    plan = plan_model(tmp_path, LoraConfig(r=8))
    assert (plan.params, plan.linear_params, plan.trainable) == (P, Q, T)
    cfg = dict(algorithm="dpo", model=str(tmp_path), batch_size=4, max_length=512)
    assert estimate_memory_gb(JobConfig(**cfg), plan) == pytest.approx(lora, abs=1e-4)
    assert estimate_memory_gb(JobConfig(**cfg, quantization="4bit"), plan) == pytest.approx(four_bit, abs=1e-4)
    checkpointing = JobConfig(**cfg, gradient_checkpointing=True)
    assert estimate_memory_gb(checkpointing, plan) == pytest.approx(checkpointed, abs=1e-4)
    full_plan = plan_model(tmp_path, None)
    assert full_plan.trainable == P and not full_plan.lora_modules
    assert estimate_memory_gb(JobConfig(**cfg, lora=None), full_plan) == pytest.approx(full, abs=1e-4)


def test_no_model_means_no_estimate_and_one_sentence(tmp_path):
    r = check(JobConfig(algorithm="dpo", model=str(tmp_path / "none")), pd.DataFrame(), tmp_path)
    assert sum("No model at" in p for p in r["problems"]) == 1 and "memory_estimate_gb" not in r["facts"]
