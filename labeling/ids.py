"""Content ids, so the same content is the same item: tasks made in the app compute them here in Python, the importer
in DuckDB with the SQL this module writes. Each id is the md5 of its parts joined by SEP, a missing part (None or
NULL) counting as ''; both forms share SEP and that rule, and tests/test_ids.py checks that they agree."""
from __future__ import annotations

import hashlib

SEP = "\x1f"


def content_id(*parts: str | None) -> str:
    return hashlib.md5(SEP.join(p or "" for p in parts).encode("utf-8")).hexdigest()


def content_id_sql(*parts: str) -> str:
    """The DuckDB expression for `content_id` of these SQL expressions (each text or NULL)."""
    return "md5(" + f" || chr({ord(SEP)}) || ".join(f"coalesce({p}, '')" for p in parts) + ")"


# Each id in Python and in SQL, side by side: the same parts in the same order.
def prompt_id(prompt: str, site: str | None) -> str:
    return content_id(site, prompt)


def prompt_id_sql(prompt: str, site: str) -> str:
    return content_id_sql(site, prompt)


def response_id(pid: str, text: str) -> str:
    return content_id(pid, text)


def response_id_sql(pid: str, text: str) -> str:
    return content_id_sql(pid, text)


def task_id(kind: str, pid: str, a_id: str | None, b_id: str | None, label: str = "") -> str:
    """`label` is part of the id of an imported labeled single task, as SQL casts the boolean: 'true' or 'false'."""
    return content_id(kind, pid, a_id, b_id, label)


def task_id_sql(kind: str, pid: str, a_id: str, b_id: str, label: str) -> str:
    return content_id_sql(kind, pid, a_id, b_id, label)
