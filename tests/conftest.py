import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with tokenizer and chat template, saved once per test session."""
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def db():
    """A fresh, migrated in-memory database."""
    from storage.db import open_db

    d = open_db(":memory:")
    yield d
    d.close()


@pytest.fixture
def ctx(tmp_path):
    """An app context on an empty home directory, single-user mode."""
    from app.context import AppContext

    c = AppContext(home=tmp_path / "home")
    yield c
    c.db.close()


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """tiny_family(name) -> the folder of a tiny random model of that family (tests/tiny.py), made once a session."""
    from tests.tiny import make_tiny_model

    made = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family=family)
        return made[family]

    return get
