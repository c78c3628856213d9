"""The algorithm registry is the one source: config validation, pre-flight and the job read it, and each rule
reaches the user once."""
import dataclasses

import pandas as pd
import pytest

from app.preflight import check
from training import algorithms
from training.config import ConfigError, JobConfig


def test_registry_entries_are_complete():
    fields = {f.name for f in dataclasses.fields(JobConfig)}
    assert algorithms.NAMES == ("sft", "minor_sft", "dpo", "minor_dpo", "eps_dpo", "mrpo", "kto")
    for a in algorithms.ALGORITHMS.values():
        assert a.title and a.explanation and a.needs
        assert a.data_kind in algorithms.DATA_COLUMNS
        assert set(a.settings) <= fields, a.name
    assert algorithms.get("eps_dpo").title == "ε-DPO"
    assert JobConfig(algorithm="kto", model="m").data_kind == "unpaired"


def test_unknown_algorithm_is_a_sentence():
    with pytest.raises(ValueError, match="algorithm must be one of sft, minor_sft"):
        algorithms.get("ppo")
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        JobConfig(algorithm="ppo", model="m").validate()


@pytest.mark.parametrize("changes, message", [
    (dict(algorithm="kto", batch_size=1), "KTO needs batch_size of at least 2"),
    (dict(algorithm="mrpo"), "MRPO needs at least one extra reference"),
    (dict(algorithm="mrpo", references=["r"], mrpo_weights=[1.0]), "mrpo_weights needs 2 values"),
    (dict(algorithm="eps_dpo", label_smoothing=0.1), "eps-DPO does not support label_smoothing"),
    (dict(algorithm="mrpo", references=["r"], mrpo_weights=[1.0, -0.5]), "mrpo_weights must all be positive"),
])
def test_each_algorithms_own_checks_run_in_validate(changes, message):
    cfg = JobConfig(model="m", **changes)
    assert any(message in p for p in algorithms.get(cfg.algorithm).problems(cfg))
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_checks_that_only_concern_training_skip_other_jobs():
    JobConfig(kind="evaluate", algorithm="kto", batch_size=1, model="m").validate()
    JobConfig(kind="evaluate", algorithm="mrpo", model="m").validate()


def test_preflight_says_the_kto_batch_rule_once(tmp_path):
    cfg = JobConfig(algorithm="kto", batch_size=1, model=str(tmp_path))
    data = pd.DataFrame({"prompt": ["a", "b"], "completion": ["x", "y"], "label": [True, False]})
    problems = check(cfg, data, tmp_path)["problems"]
    sentence = "KTO needs batch_size of at least 2 (its KL estimate pairs each prompt with another example's answer)."
    assert problems.count(sentence) == 1
    assert sum("batch" in p for p in problems) == 1


def test_kto_with_one_class_is_one_sentence_everywhere(tmp_path):
    cfg = JobConfig(algorithm="kto", model=str(tmp_path))
    data = pd.DataFrame({"prompt": ["a", "b"], "completion": ["x", "y"], "label": [True, True]})
    problems = check(cfg, data, tmp_path)["problems"]
    sentence = algorithms.kto_classes_problem(2, 0)
    assert problems.count(sentence) == 1 and "only good ones (2)" in sentence
    from training.losses import kto_desirable_weight

    with pytest.raises(ValueError, match="only good ones"):
        kto_desirable_weight(2, 0)


def test_preflight_names_the_labels_an_algorithm_needs(tmp_path):
    cfg = JobConfig(algorithm="dpo", model=str(tmp_path))
    problems = check(cfg, pd.DataFrame(), tmp_path)["problems"]
    assert f"DPO trains on {algorithms.DATA_NEEDS['pairs']}, and the selection has none." in problems


def _model_dir(path, hidden: int, vocab: str):
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden, "_name_or_path": str(path)}))
    (path / "tokenizer.json").write_text(vocab)
    return path


def test_mrpo_refuses_a_reference_from_another_base_model_or_tokenizer(tmp_path):
    """An adapter trained from another base, or a model folder with another tokenizer, is refused with a sentence
    naming it; an adapter of the same base (even found at another path) is accepted."""
    import json

    base = _model_dir(tmp_path / "base", 64, '{"vocab": 1}')
    copy = _model_dir(tmp_path / "copy-of-base", 64, '{"vocab": 1}')
    other = _model_dir(tmp_path / "other", 128, '{"vocab": 1}')
    other_tok = _model_dir(tmp_path / "other-tok", 64, '{"vocab": 2}')

    def adapter(name, trained_from):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(trained_from)}))
        return str(d)

    ok = [adapter("same", base), adapter("moved", copy)]
    JobConfig(algorithm="mrpo", model=str(base), references=ok).validate()
    wrong = adapter("wrong", other)
    with pytest.raises(ConfigError, match=r"was trained from .*other, not from this run's base model"):
        JobConfig(algorithm="mrpo", model=str(base), references=[ok[0], wrong]).validate()
    with pytest.raises(ConfigError, match="has a different tokenizer from the base model"):
        JobConfig(algorithm="mrpo", model=str(base), references=[str(other_tok)]).validate()
    data = pd.DataFrame({"prompt": ["a"], "chosen": ["x"], "rejected": ["y"]})
    cfg = JobConfig(algorithm="mrpo", model=str(base), references=[wrong])
    assert sum("MRPO's references must share the base model" in p for p in check(cfg, data, tmp_path)["problems"]) == 1
