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
from training.model_export import ExportError, export_run

PROMPT, ANSWER = "Check the pump on line three", "Stop the pump, then torque the housing bolts."

# Runs in a fresh interpreter with nothing of Preflab imported: the exported folder alone (plus the base model for
# an adapter) must give the answer's log-prob, with the prompt built from the exported tokenizer's chat template.
FRESH = r"""
import json, sys, torch
kind, folder, base, prompt, answer = sys.argv[1:]
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(folder)
if kind == "adapter":
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
else:
    model = AutoModelForCausalLM.from_pretrained(folder)
model.eval()
p = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
p = list(p["input_ids"] if hasattr(p, "keys") else p)
r = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
ids = torch.tensor([p + r])
with torch.no_grad():
    lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
print(json.dumps({"ids": ids[0].tolist(), "logp": float(lp[len(p) - 1:].sum())}))
"""


def workbench_logp(model_dir, adapter_dir):
    """The answer's log-prob as the trainer and evaluation compute it (training.modeling.response_logps)."""
    from training.data import collate, encode_prompt, encode_response
    from training.modeling import load_model, load_tokenizer, response_logps

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids, attn, resp = collate([(encode_prompt(tok, PROMPT), encode_response(tok, ANSWER))], tok.pad_token_id)
    with torch.no_grad():
        return ids[0].tolist(), float(response_logps(model, ids, attn, resp).logps[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    run = make_run(tmp_path_factory.mktemp("run") / "r", tiny_model_dir, "dpo", eval_rows=True, max_steps=6,
                   learning_rate=5e-2)
    assert run_job(run) == 0
    return run


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_export_reloads_in_a_fresh_process_with_equal_logps(trained, tiny_model_dir, tmp_path, kind):
    r = export_run(trained, tmp_path / kind, form=kind,
                   info={"run_id": "r1", "snapshot_id": "abc123"})
    out = tmp_path / kind
    assert r["path"] == str(out) and not (tmp_path / f"{kind}.partial").exists()
    card = (out / "README.md").read_text()
    # base model, algorithm, hyper-parameters, snapshot hash, label counts per site, held-out metrics, date
    for needle in (str(tiny_model_dir), "| algorithm | DPO |", "| learning_rate | 0.05 |", "| beta | 0.1 |",
                   "abc123", "| plant-a | 4 |", "| plant-b | 4 |", "eval/accuracy", "| Exported | 20"):
        assert needle in card, needle
    assert "desirable_weight" not in card      # KTO's settings do not describe a DPO run
    if kind == "merged":
        assert list(out.glob("*.safetensors")) and (out / "tokenizer_config.json").exists()
        assert not (out / "adapter_config.json").exists()
        assert "chat_template" in (out / "tokenizer_config.json").read_text() or (out / "chat_template.jinja").exists()
    else:
        assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    proc = subprocess.run([sys.executable, "-c", FRESH, kind, str(out), str(tiny_model_dir), PROMPT, ANSWER],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    ids, inside = workbench_logp(tiny_model_dir, trained / "adapter")
    assert fresh["ids"] == ids                      # the exported tokenizer and chat template encode alike
    assert fresh["logp"] == pytest.approx(inside, abs=1e-3)
    # and training changed the model: the export is not just the base
    _, base_logp = workbench_logp(tiny_model_dir, None)
    assert abs(inside - base_logp) > 0.05
    assert JobConfig.load(trained / "config.json").model == str(tiny_model_dir)
    assert any(n.endswith("README.md") for n in zipfile.ZipFile(r["zip"]).namelist())


def test_full_fine_tune_exports_merged_only(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "full", tiny_model_dir, "sft", lora=None, max_steps=2)
    assert run_job(run) == 0
    with pytest.raises(ExportError, match="no LoRA adapter"):
        export_run(run, tmp_path / "a", form="adapter")
    r = export_run(run, tmp_path / "m", form="merged", make_zip=False)
    assert r["zip"] is None and "model.safetensors" in r["files"] and "tokenizer_config.json" in r["files"]
    assert "(full fine-tuning)" in (tmp_path / "m" / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    b = AutoModelForCausalLM.from_pretrained(run / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


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
