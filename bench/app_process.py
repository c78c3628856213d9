"""The real app in its own process, as a user starts it: `with running_app(home) as (url, proc)`. Shared by the
benchmarks that measure it over HTTP or in a browser and by the browser tests (tests/browser.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(home: Path, auth: bool = False, env: dict | None = None, wait_s: float = 120):
    """`python -m app serve` on a free port with PREFLAB_HOME=home, once its port accepts connections; SIGTERM (then
    SIGKILL) on leaving. Its output goes to home/server.log, whose tail is the error if it exits while starting."""
    port = free_port()
    e = {**os.environ, "PREFLAB_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT),
         **(env or {})}
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port)] + (["--auth"] if auth else [])
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited: {(home / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.time() > deadline:
                raise RuntimeError(f"the app did not accept connections within {wait_s:.0f} s")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
