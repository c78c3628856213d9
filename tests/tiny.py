"""Tiny random models and a byte-level BPE tokenizer trained on the fly: the whole test suite trains on these in
seconds on a 2-core CPU. They have a chat template, like the real default model. Llama is the default; GPT-2
(fused c_attn, Conv1D layers, learned positions) and Qwen2 (biased q/k/v) check that nothing assumes Llama's shape."""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The pump on line three makes a grinding noise after the filter change.",
    "Please reset your password from the account page and try again.",
    "Check the torque on the bearing housing bolts before restarting.",
    "A refund takes five business days to appear on your statement.",
    "Report every spill to the site safety officer within one hour.",
    "The audit found two missing signatures on the batch record.",
    "Thank you for your patience, I have escalated the ticket.",
    "Replace the worn belt and log the part number in the system.",
] * 20


FAMILIES = ("llama", "gpt2", "qwen2")   # all pack prompts; "bloom" (ALiBi, no position ids) cannot


def make_tiny_model(out_dir: str | Path, vocab_size: int = 512, hidden: int = 64, layers: int = 2,
                    seed: int = 0, family: str = "llama") -> Path:
    """Write a tiny causal LM of `family` (see FAMILIES) + tokenizer to out_dir and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, len(fast), hidden, layers, fast))
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


def _config(family: str, vocab: int, hidden: int, layers: int, tok):
    from transformers import BloomConfig, GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               tie_word_embeddings=True)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **ids)
    if family == "bloom":
        return BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=4, **ids)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **ids)
