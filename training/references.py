"""Whether an extra MRPO reference can be compared with the run's base model: reference log-probs only mean
something against the base when both score the same tokens, so an adapter must have been trained from this base
(its adapter_config.json names it) and a whole model folder must share the base's tokenizer. No torch here: the
config check (and so the app's pre-flight check) calls it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")


def tokenizer_fingerprint(model_dir: Path) -> str | None:
    """A hash of the folder's tokenizer files; None when it has none."""
    h, found = hashlib.sha256(), False
    for name in TOKENIZER_FILES:
        f = model_dir / name
        if f.exists():
            h.update(name.encode() + f.read_bytes())
            found = True
    return h.hexdigest() if found else None


def _architecture(model_dir: Path) -> dict | None:
    """config.json without the keys that name where it was loaded from or what wrote it."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "transformers_version"}


def same_model(a: Path, b: Path) -> bool:
    """One model in two places: the same folder, or folders with the same architecture and tokenizer."""
    if a.resolve() == b.resolve():
        return True
    if not (a.is_dir() and b.is_dir()):
        return a.name == b.name    # the named base is not on this machine: only its folder name can be compared
    return _architecture(a) == _architecture(b) and tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def reference_problem(base: str | Path, ref: str | Path) -> str | None:
    """A sentence when reference `ref` (an adapter or model folder) cannot serve against base model `base`; None
    when it can, or when a folder is missing (the job reports a missing reference when it loads it)."""
    base, ref = Path(base), Path(ref)
    adapter_cfg = ref / "adapter_config.json"
    if adapter_cfg.exists():
        try:
            named = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path") or ""
        except ValueError:
            return f"Reference {ref}: adapter_config.json is not valid JSON."
        if named and not same_model(base, Path(named)):
            return (f"Reference {ref} was trained from {named}, not from this run's base model {base}: MRPO's "
                    "references must share the base model. Pick runs trained from the same model.")
        return None
    if (ref / "config.json").exists() and base.is_dir():
        if tokenizer_fingerprint(ref) != tokenizer_fingerprint(base):
            return (f"Reference {ref} has a different tokenizer from the base model {base}: MRPO compares "
                    "log-probabilities of the same tokens, so every reference must share the base's tokenizer.")
    return None
