"""Content ids shared by import and by tasks created in the app, so the same content is the same item."""
from __future__ import annotations

import hashlib

SEP = "\x1f"


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def prompt_id(prompt: str, site: str | None) -> str:
    return md5((site or "") + SEP + prompt)


def response_id(pid: str, text: str) -> str:
    return md5(pid + SEP + text)


def task_id(kind: str, pid: str, a_id: str | None, b_id: str | None, label: str = "") -> str:
    return md5(SEP.join([kind, pid, a_id or "", b_id or "", label]))
