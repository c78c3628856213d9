"""The README's troubleshooting cases answer with the sentence it quotes, not a trace."""
import json
import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def run_app(*args, home):
    env = {**os.environ, "PREFLAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=str(ROOT), env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_port_in_use_is_named_with_another_port_to_try(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_app("serve", "--port", str(port), home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    error = json.loads(r.stdout)["error"]
    assert f"Port {port} on 127.0.0.1 is in use" in error and f"--port {port + 1}" in error


def test_a_database_held_by_another_app_is_named_with_its_process(tmp_path):
    from storage.db import open_db

    db = open_db(tmp_path / "preflab.duckdb")     # this process plays the app that holds the file
    try:
        r = run_app("import", str(tmp_path / "nothing.jsonl"), home=tmp_path)
    finally:
        db.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    error = json.loads(r.stdout)["error"]
    assert "is in use by another process" in error and f"pid {os.getpid()}" in error and "PREFLAB_HOME" in error
