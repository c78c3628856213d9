"""Export: the adapter and the merged model load with plain transformers/peft in a fresh process and give the
same log-probs as inside the workbench; the model card states what a reader needs."""
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from tests.jobdata import make_run
from training.__main__ import run_job
from training.config import JobConfig
from training.export import ExportError, export_run

TEXT = "<|im_start|>user\nCheck the pump<|im_end|>\n<|im_start|>assistant\nStop the pump, then torque the bolts.<|im_end|>"

FRESH = r"""
import json, sys, torch
kind, folder, base, text = sys.argv[1:]
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(folder)
if kind == "adapter":
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
else:
    model = AutoModelForCausalLM.from_pretrained(folder)
model.eval()
ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).sum()
print(json.dumps({"logp": float(lp)}))
"""


def workbench_logp(model_dir, adapter_dir):
    from peft import PeftModel

    from training.modeling import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(load_model(model_dir), str(adapter_dir)).eval()
    ids = tok(TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return float(torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    run = make_run(tmp_path_factory.mktemp("run") / "r", tiny_model_dir, "dpo", max_steps=6, learning_rate=5e-2)
    assert run_job(run) == 0
    return run


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_export_reloads_in_a_fresh_process_with_equal_logps(trained, tiny_model_dir, tmp_path, kind):
    r = export_run(trained, tmp_path / kind, form=kind,
                   info={"run_id": "r1", "snapshot_id": "abc123"})
    out = tmp_path / kind
    card = (out / "README.md").read_text()
    for needle in ("dpo", "abc123", "plant-a"):
        assert needle in card.lower(), needle
    if kind == "merged":
        assert list(out.glob("*.safetensors")) and (out / "tokenizer_config.json").exists()
        assert "chat_template" in (out / "tokenizer_config.json").read_text() or (out / "chat_template.jinja").exists()
    proc = subprocess.run([sys.executable, "-c", FRESH, kind, str(out), str(tiny_model_dir), TEXT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])["logp"]
    inside = workbench_logp(tiny_model_dir, trained / "adapter")
    assert fresh == pytest.approx(inside, abs=1e-3)
    # and training changed the model: the export is not just the base
    base = JobConfig.load(trained / "config.json")
    assert base.model == str(tiny_model_dir)
    assert any(n.endswith("README.md") for n in zipfile.ZipFile(r["zip"]).namelist())


def test_unfinished_run_cannot_be_exported(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo")
    with pytest.raises(ExportError, match="no trained model"):
        export_run(run, tmp_path / "out")


def test_runs_page_export_is_admin_only_and_zips(ctx, trained):
    from app.context import User
    from app.context import UserError
    from app.pages.runs import export

    ctx.db.execute("INSERT INTO runs (id, kind, algorithm, config, run_dir, state) VALUES ('r1', 'train', 'dpo', '{}', ?, "
                   "'finished')", [str(trained)])
    with pytest.raises(UserError, match="only an admin"):
        export(ctx, User("ann", "annotator"), "r1", "adapter")
    z = export(ctx, User("boss", "admin"), "r1", "adapter")
    names = zipfile.ZipFile(z).namelist()
    assert any(n.endswith("adapter_config.json") for n in names) and any(n.endswith("README.md") for n in names)
