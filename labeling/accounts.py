"""Accounts: names, bcrypt-hashed passwords and roles (annotator, admin), stored in DuckDB.

Only the hash is stored; no function here returns it. A wrong name and a wrong password look the same to the
caller (check_password is False), so a login form cannot be used to find out which names exist.
"""
from __future__ import annotations

import functools
import re

import bcrypt

from storage.db import Database

ROLES = ("annotator", "admin")
NAME = re.compile(r"^[\w.@+-]{1,64}$")
MIN_PASSWORD = 6
MAX_PASSWORD_BYTES = 72          # bcrypt looks at the first 72 bytes only; refuse rather than silently truncate


def set_user(db: Database, name: str, password: str, role: str = "annotator", site: str | None = None) -> dict:
    """Create the account, or update its password, role and site. Raises ValueError with a sentence."""
    name = (name or "").strip()
    if not name:
        raise ValueError("An account needs a name.")
    if not NAME.match(name):
        raise ValueError(f"The name {name[:70]!r} may only use letters, digits and . _ @ + - (at most 64).")
    if role not in ROLES:
        raise ValueError(f"Role must be annotator or admin, not {role!r}.")
    if len(password or "") < MIN_PASSWORD:
        raise ValueError(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"A password can be at most {MAX_PASSWORD_BYTES} bytes long.")
    site = (site or "").strip() or None
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    with db.transaction():
        existed = db.scalar("SELECT count(*) FROM annotators WHERE name = ?", [name]) > 0
        if existed:
            db.execute("UPDATE annotators SET password_hash = ?, role = ?, site = ? WHERE name = ?",
                       [hashed, role, site, name])
        else:
            db.execute("INSERT INTO annotators (name, password_hash, role, site) VALUES (?, ?, ?, ?)",
                       [name, hashed, role, site])
    return {"ok": True, "name": name, "role": role, "site": site, "updated": existed}


def check_password(db: Database, name: str, password: str) -> bool:
    row = db.fetchone("SELECT password_hash FROM annotators WHERE name = ?", [(name or "").strip()])
    if row is None or not row[0]:
        bcrypt.checkpw(b"x", _dummy_hash())   # same cost as a real check: timing does not reveal unknown names
        return False
    try:
        return bcrypt.checkpw((password or "").encode(), row[0].encode())
    except ValueError:                   # over-long password or a damaged hash
        return False


def get_user(db: Database, name: str) -> dict | None:
    rows = db.records("SELECT name, role, site, created_at FROM annotators WHERE name = ?", [name])
    return rows[0] if rows else None


def list_users(db: Database) -> list[dict]:
    """Every account: name, role, site, created_at (never the hash)."""
    return db.records("SELECT name, role, site, created_at FROM annotators ORDER BY name")


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> bytes:
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt())
