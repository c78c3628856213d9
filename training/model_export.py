"""Take a trained model out of the workbench, in a form other tools load with plain `transformers`/`peft`.

Two forms, from a finished run directory (storage/rundir.py):
- "adapter": the LoRA adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors), plus the
  tokenizer, for people who keep the base model and swap adapters;
- "merged": the adapter folded into the base weights (or a full fine-tune's weights) as one Hugging Face model
  folder (safetensors, config, tokenizer with its chat template, generation config).
Each gets a model card (README.md) that says what went in: base model, algorithm, hyper-parameters, data snapshot
hash, label counts per site, held-out metrics, date; and a zip of the folder for download.

The job contract is the only input: config.json, adapter/ or model/, data/train.parquet, metrics.jsonl and
eval.json. What only the app knows (run name, snapshot id, label counts from the database) comes in `info`.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from storage import rundir
from training import algorithms

FORMS = ("adapter", "merged")


class ExportError(ValueError):
    """Why a run cannot be exported, in one sentence."""


def export_run(run_dir: str | Path, out_dir: str | Path, form: str = "adapter", info: dict | None = None,
               make_zip: bool = True) -> dict:
    """Write the export folder `out_dir` (replacing an older export there) and, by default, `out_dir`.zip.
    Returns {ok, form, path, zip, base_model, files}."""
    run_dir, out_dir, info = Path(run_dir), Path(out_dir), dict(info or {})
    if form not in FORMS:
        raise ExportError(f"Export form must be one of {', '.join(FORMS)}, not {form!r}.")
    cfg = rundir.read_config(run_dir)
    if not cfg:
        raise ExportError(f"{run_dir} is not a run: it has no readable {rundir.CONFIG}.")
    adapter, full = run_dir / rundir.ADAPTER, run_dir / rundir.MODEL
    has_adapter = (adapter / "adapter_config.json").exists()
    has_full = (full / "config.json").exists()
    if not has_adapter and not has_full:
        raise ExportError("This run has no trained model yet: export is possible once it has finished.")
    if form == "adapter" and not has_adapter:
        raise ExportError("This run fine-tuned the whole model, so there is no LoRA adapter: export it merged.")
    base = Path(cfg.get("model") or "")
    if has_adapter and not (base / "config.json").exists():
        raise ExportError(f"The base model of this run is missing ({base}): it is needed to merge or describe the "
                          "adapter.")

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if form == "adapter":
            _copy_files(adapter, tmp)
            _save_tokenizer(base, tmp)
        elif has_adapter:
            _merge(base, adapter, tmp)
        else:
            _copy_files(full, tmp)
            if not (tmp / "tokenizer_config.json").exists():
                _save_tokenizer(base, tmp)
        (tmp / "README.md").write_text(model_card(run_dir, cfg, form, info), encoding="utf-8")
        (tmp / "preflab_run.json").write_text(json.dumps(
            {"run_id": info.get("run_id", run_dir.name), "form": form, "config": cfg,
             "snapshot_id": info.get("snapshot_id"), "exported_at": _now()}, indent=1, default=str))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    zip_path = None
    if make_zip:
        zip_path = Path(shutil.make_archive(str(out_dir), "zip", root_dir=out_dir.parent, base_dir=out_dir.name))
    return {"ok": True, "form": form, "path": str(out_dir), "zip": str(zip_path) if zip_path else None,
            "base_model": str(base), "files": sorted(p.name for p in out_dir.iterdir())}


# -- the two forms --------------------------------------------------------------------------------------------------------
def _copy_files(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        if p.is_file():
            shutil.copy2(p, dst / p.name)


def _save_tokenizer(model_dir: Path, dst: Path) -> None:
    """The tokenizer exactly as the base ships it (with its chat template), not the trainer's padded variant."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(dst)


def _merge(base: Path, adapter: Path, dst: Path) -> None:
    """Fold the LoRA update into the base weights (W + B A * alpha / r) and save a plain model, in the base's
    dtype, with safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(dst)
    _save_tokenizer(base, dst)


# -- model card -----------------------------------------------------------------------------------------------------------
# The objective's own settings come from its registry entry (training/algorithms.py); then the optimisation settings
# every run has.
COMMON_FIELDS = ("learning_rate", "lr_scheduler", "warmup_steps", "weight_decay", "max_grad_norm", "batch_size",
                 "grad_accum", "max_steps", "epochs", "max_length", "max_prompt_length", "seed", "precision")


def model_card(run_dir: Path, cfg: dict, form: str, info: dict) -> str:
    base = Path(cfg.get("model") or "")
    entry = algorithms.ALGORITHMS.get(cfg.get("algorithm"))
    algo = entry.title if entry else str(cfg.get("algorithm"))
    lora = cfg.get("lora")
    counts = info.get("label_counts") or label_counts(run_dir, cfg)
    # A caller may count rows per site only ({site: n}); show that as one column.
    counts = {str(site): (per if isinstance(per, dict) else {"rows": per}) for site, per in counts.items()}
    metrics = held_out_metrics(run_dir)
    lib = "peft" if form == "adapter" else "transformers"
    lines = ["---", f"library_name: {lib}", f"base_model: {base.name or 'unknown'}",
             f"tags: [preflab, {cfg.get('algorithm')}{', lora' if lora else ''}]", "---", "",
             f"# {info.get('run_name') or run_dir.name}", "",
             f"Fine-tuned with Preflab from **{base.name}** (`{base}`) by **{algo}**"
             f"{' with a LoRA adapter' if lora else ' (full fine-tuning)'}; exported as "
             f"{'a PEFT adapter' if form == 'adapter' else 'a merged Hugging Face model'}.", "",
             "| | |", "|---|---|",
             f"| run | `{info.get('run_id', run_dir.name)}` |",
             f"| base model | `{base}` |",
             f"| algorithm | {algo} |",
             f"| data snapshot (content hash) | `{info.get('snapshot_id') or 'not recorded'}` |",
             f"| trained steps | {_final_step(run_dir)} |",
             f"| Exported | {_now()} |", "",
             "## Hyper-parameters", "", "| name | value |", "|---|---|"]
    fields = (entry.settings if entry else ()) + COMMON_FIELDS
    lines += [f"| {k} | {cfg[k]} |" for k in fields if cfg.get(k) not in (None, [], "")]
    if lora:
        lines += [f"| lora.{k} | {v} |" for k, v in lora.items()]
    if cfg.get("federated"):
        lines += [f"| federated.{k} | {v} |" for k, v in cfg["federated"].items()]
    lines += ["", "## Training data: labels per site", ""]
    if counts:
        classes = sorted({c for per in counts.values() for c in per})
        lines += ["| site | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        lines += [f"| {site} | " + " | ".join(str(per.get(c, 0)) for c in classes) + " |"
                  for site, per in sorted(counts.items())]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Held-out metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No held-out set was evaluated for this run.")
    lines += ["", "## Loading it", "", "```python", *_load_snippet(form, base), "```", ""]
    return "\n".join(lines)


def _load_snippet(form: str, base: Path) -> list[str]:
    if form == "adapter":
        return ["from peft import PeftModel",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'base = AutoModelForCausalLM.from_pretrained("{base}")  # or your copy of the base model',
                'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
                'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    return ["from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")  # apply_chat_template for prompts']


def label_counts(run_dir: Path, cfg: dict) -> dict[str, dict[str, int]]:
    """Training rows per site and class, from the run's frozen data: pairs, good/bad, or written examples."""
    import pandas as pd

    path = run_dir / rundir.TRAIN_DATA
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    site = df["site"].fillna("(no site)").astype(str) if "site" in df.columns else pd.Series(["(no site)"] * len(df))
    if "label" in df.columns:
        cls = df["label"].map(lambda v: "good" if bool(v) else "bad")
    elif "chosen" in df.columns:
        cls = pd.Series(["pairs"] * len(df))
    else:
        cls = pd.Series(["written"] * len(df))
    out: dict[str, dict[str, int]] = {}
    for (s, c), n in pd.crosstab(site.values, cls.values).stack().items():
        if n:
            out.setdefault(str(s), {})[str(c)] = int(n)
    return out


def held_out_metrics(run_dir: Path) -> dict:
    """The last evaluation the run logged (metrics.jsonl, split 'eval'), else an evaluate job's eval.json."""
    last = None
    records, _ = rundir.read_metrics(run_dir)
    for r in records:
        if r.get("split") == "eval":
            last = r
    if last is None:
        last = rundir.read_json(run_dir / rundir.EVAL_REPORT)
    if not last:
        return {}
    return {k: v for k, v in last.items()
            if k not in ("step", "time", "split", "site") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _final_step(run_dir: Path) -> str:
    final = rundir.read_json(run_dir / "final.json") or {}
    return str(final.get("step", "?"))


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
