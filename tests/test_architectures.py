"""Any architecture: the default LoRA targets every linear layer of the model, whatever their names (Llama's
q_proj.., GPT-2's c_attn/c_proj/c_fc), every algorithm trains on tiny GPT-2, Qwen2 and Llama models with prompt
packing on, and a model that cannot take packed rows (BLOOM's ALiBi) trains padded, with a note."""
import json

import pytest

from storage import rundir
from tests.jobdata import make_run
from tests.tiny import FAMILIES
from training.__main__ import run_job

LINEAR = {"llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
          "gpt2": ["c_attn", "c_fc", "c_proj"],
          "qwen2": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
          "bloom": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]}


def without_target_modules(run):
    """config.json as a person writes it: LoRA settings with no target_modules at all."""
    cfg = json.loads((run / "config.json").read_text())
    cfg["lora"] = {"r": 4, "alpha": 8}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def adapted(run) -> list[str]:
    """The short names of the layers the run's saved adapter wraps."""
    names = json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"]
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def train_steps(run) -> list[dict]:
    assert run_job(run) == 0, rundir.read_status(run).get("error")
    assert rundir.read_status(run)["state"] == "finished"
    return [r for r in rundir.read_metrics(run)[0] if r.get("split") == "train"]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_dpo_and_kto_train_any_architecture_with_no_target_modules(tmp_path, tiny_family, family, algorithm):
    run = without_target_modules(make_run(tmp_path / "r", tiny_family(family), algorithm, learning_rate=5e-2))
    lines = train_steps(run)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["loss"] != pytest.approx(lines[0]["loss"], abs=1e-4)      # it trained
    assert adapted(run) == LINEAR[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_algorithm_trains_each_family_with_packing(tmp_path, tiny_family, family):
    model = tiny_family(family)
    first = make_run(tmp_path / "dpo", model, "dpo", max_steps=2)
    train_steps(first)
    for algorithm in ("sft", "minor_sft", "eps_dpo", "kto", "mrpo"):
        refs = [str(first / "adapter")] if algorithm == "mrpo" else []
        run = make_run(tmp_path / algorithm, model, algorithm, max_steps=2, references=refs)
        assert [r["step"] for r in train_steps(run)] == [1, 2], algorithm
        assert "note" not in rundir.read_status(run)


def test_a_model_without_position_ids_trains_padded_with_a_note(tmp_path, tiny_family):
    run = make_run(tmp_path / "r", tiny_family("bloom"), "dpo", max_steps=2, pack_prompts=True)
    assert len(train_steps(run)) == 2
    assert "prompts are not packed" in rundir.read_status(run)["note"]
    assert adapted(run) == LINEAR["bloom"]
