"""Accounts: names, bcrypt-hashed passwords and roles (annotator, admin), stored in DuckDB."""
from __future__ import annotations

import bcrypt

from storage.db import Database

ROLES = ("annotator", "admin")


def set_user(db: Database, name: str, password: str, role: str = "annotator", site: str | None = None) -> dict:
    name = (name or "").strip()
    if not name:
        raise ValueError("An account needs a name.")
    if role not in ROLES:
        raise ValueError(f"Role must be annotator or admin, not {role!r}.")
    if len(password or "") < 6:
        raise ValueError("A password needs at least 6 characters.")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    existed = db.scalar("SELECT count(*) FROM annotators WHERE name = ?", [name]) > 0
    db.execute("INSERT OR REPLACE INTO annotators (name, password_hash, role, site) VALUES (?, ?, ?, ?)",
               [name, hashed, role, site])
    return {"ok": True, "name": name, "role": role, "site": site, "updated": existed}


def check_password(db: Database, name: str, password: str) -> bool:
    row = db.fetchone("SELECT password_hash FROM annotators WHERE name = ?", [name])
    if row is None or not row[0]:
        return False
    try:
        return bcrypt.checkpw((password or "").encode(), row[0].encode())
    except ValueError:
        return False


def list_users(db: Database) -> list[dict]:
    return db.records("SELECT name, role, site, created_at FROM annotators ORDER BY name")
