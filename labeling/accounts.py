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


def set_user(db: Database, name: str, password: str, role: str = "annotator", site: str | None = None,
             site_only: bool | None = None) -> dict:
    """Create the account, or update its password, role and site (site_only: the queue serves this annotator only
    tasks of that site; None keeps what the account had). An update ends the account's sessions. Raises
    ValueError with a sentence."""
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
    if site_only and not site:
        raise ValueError(f"To keep {name} to one site, give the site.")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    with db.transaction():
        existed = db.scalar("SELECT count(*) FROM annotators WHERE name = ?", [name]) > 0
        if site_only is None:
            site_only = bool(existed and db.scalar("SELECT site_only FROM annotators WHERE name = ?", [name])
                             and site)
        if existed:
            db.execute("""UPDATE annotators SET password_hash = ?, role = ?, site = ?, site_only = ?,
                          session_epoch = session_epoch + 1 WHERE name = ?""",    # its open sessions end
                       [hashed, role, site, site_only, name])
        else:
            db.execute("INSERT INTO annotators (name, password_hash, role, site, site_only) VALUES (?, ?, ?, ?, ?)",
                       [name, hashed, role, site, site_only])
    return {"ok": True, "name": name, "role": role, "site": site, "site_only": site_only, "updated": existed}


def set_disabled(db: Database, name: str, disabled: bool = True) -> dict:
    """Switch an account off (no login; its open sessions end at their next request) or on again."""
    with db.transaction():
        if not db.scalar("SELECT count(*) FROM annotators WHERE name = ?", [name]):
            raise ValueError(f"There is no account named {name[:70]!r}.")
        db.execute("UPDATE annotators SET disabled = ?, session_epoch = session_epoch + 1 WHERE name = ?",
                   [disabled, name])
    return {"ok": True, "name": name, "disabled": disabled}


def session_state(db: Database, name: str) -> tuple[bool, int] | None:
    """(disabled, session epoch) of an account, None when there is none: a session is valid while the account is
    enabled and its epoch is the one it started under."""
    row = db.fetchone("SELECT coalesce(disabled, FALSE), coalesce(session_epoch, 0) FROM annotators WHERE name = ?",
                      [name])
    return None if row is None else (bool(row[0]), int(row[1]))


def check_password(db: Database, name: str, password: str) -> bool:
    row = db.fetchone("SELECT password_hash FROM annotators WHERE name = ? AND NOT coalesce(disabled, FALSE)",
                      [(name or "").strip()])
    if row is None or not row[0]:            # no such account, or a disabled one: the same answer
        bcrypt.checkpw(b"x", _dummy_hash())   # same cost as a real check: timing does not reveal unknown names
        return False
    try:
        return bcrypt.checkpw((password or "").encode(), row[0].encode())
    except ValueError:                   # over-long password or a damaged hash
        return False


def get_user(db: Database, name: str) -> dict | None:
    rows = db.records("""SELECT name, role, site, coalesce(site_only, FALSE) AS site_only,
                                coalesce(disabled, FALSE) AS disabled, created_at FROM annotators WHERE name = ?""",
                      [name])
    return rows[0] if rows else None


def list_users(db: Database) -> list[dict]:
    """Every account: name, role, site, site_only, disabled, created_at (never the hash)."""
    return db.records("SELECT name, role, site, site_only, disabled, created_at FROM annotators ORDER BY name")


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> bytes:
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt())
