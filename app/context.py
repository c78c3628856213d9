"""Where the app's state lives (PREFLAB_HOME), who is asking, and what only an admin may do.

Every Gradio handler is also an HTTP API endpoint, so roles are checked by the action, not by hiding buttons: an
action that imports, exports, edits guidelines, manages users, resolves disputes or starts jobs is declared
`@admin_only("...")` and refuses an annotator however it is reached (page, API, test). How a handler gets its
user and shows errors: app.handlers.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from storage.db import Database, open_db

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


def home_dir() -> Path:
    return Path(os.environ.get("PREFLAB_HOME", "data")).resolve()


class UserError(Exception):
    """A problem to show a person as one sentence (bad input, not allowed, not found)."""


class PermissionDenied(UserError):
    pass


@dataclass(frozen=True)
class User:
    name: str
    role: str            # annotator | admin
    site: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL_ADMIN = User("local", "admin", None)


class AppContext:
    """The app's shared state: paths, the one database, and the auth mode."""

    def __init__(self, home: str | Path | None = None, db: Database | None = None, auth_required: bool = False):
        self.home = Path(home) if home else home_dir()
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = db or open_db(self.home / "preflab.duckdb")
        self.auth_required = auth_required
        self.supervisor = None   # set by app.server when the job supervisor starts
        # login token -> the account's session epoch when it logged in (app.server records each login); a token
        # first seen by `user` is taken to have started then. login_tokens: Gradio's token -> name, set by app.server
        self.sessions: dict[str, int] = {}
        self.login_tokens: dict | None = None
        self.downloads: dict[str, set[str]] = {}   # an export's file name -> who made it (app.web_guard serves it)

    # -- paths --------------------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    def default_model(self) -> Path:
        return Path(os.environ.get("PREFLAB_MODEL") or self.models_dir / DEFAULT_MODEL_NAME)

    def labeling(self):
        """Around a labeling request: the job the app is training pauses while it is served (app.priority)."""
        sup = self.supervisor
        return sup.labeling_first.hold() if sup is not None else contextlib.nullcontext()

    # -- who is asking ------------------------------------------------------------------------------------
    def user(self, request: Any) -> User:
        """The logged-in user of a Gradio request. Single-user mode (local, no login): the local admin."""
        if not self.auth_required:
            return LOCAL_ADMIN
        name = getattr(request, "username", None) if request is not None else None
        if not name:
            raise PermissionDenied("Please log in first.")
        row = self.db.fetchone("""SELECT name, role, site, coalesce(disabled, FALSE), coalesce(session_epoch, 0)
                                  FROM annotators WHERE name = ?""", [name])
        if row is None:
            raise PermissionDenied(f"There is no account named {name!r}.")
        if row[3]:
            raise PermissionDenied(f"The account {name} is disabled; ask an admin.")
        token = session_token(request)
        if token is not None and self.sessions.setdefault(token, row[4]) != row[4]:
            self.end_session(token)
            raise PermissionDenied("Your session has ended (the password was changed): please log in again.")
        return User(*row[:3])

    def session_ok(self, token: str, name: str) -> bool:
        """Whether a login token may still be used: its account exists, is enabled, and has the session epoch it
        logged in under (a password change or disabling ends every earlier session). Read without the lock:
        app.web_guard asks on every request."""
        row = self.db.reader().fetchone("""SELECT coalesce(disabled, FALSE), coalesce(session_epoch, 0)
                                           FROM annotators WHERE name = ?""", [name])
        return row is not None and not row[0] and self.sessions.setdefault(token, row[1]) == row[1]

    def offer_download(self, path: str | Path, user: User) -> str:
        """An export for `user` to download: readable on disk by this user only, and served to no one but the
        admin(s) who made it (its file name is the key app.web_guard checks)."""
        Path(path).chmod(0o600)
        self.downloads.setdefault(Path(path).name, set()).add(user.name)
        return str(path)

    def end_session(self, token: str) -> None:
        """Forget a login: Gradio's token (set by app.server) and the epoch it started under."""
        self.sessions.pop(token, None)
        if self.login_tokens is not None:
            self.login_tokens.pop(token, None)


def session_token(request: Any) -> str | None:
    """The login token a request carries (Gradio's access-token cookie), None without one."""
    cookies = getattr(request, "cookies", None) or {}
    return next((v for k, v in cookies.items() if k.startswith("access-token")), None)


def require_admin(user: User, action: str) -> User:
    """The one refusal of an annotator: "ann is an annotator; only an admin can <action>."."""
    if not user.is_admin:
        raise PermissionDenied(f"{user.name} is an annotator; only an admin can {action}.")
    return user


def admin_only(action: str) -> Callable:
    """Declare an action `fn(ctx, user, ...)` admins only; `action` finishes the refusal's sentence."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def checked(ctx: "AppContext", user: User, *args, **kwargs):
            require_admin(user, action)
            return fn(ctx, user, *args, **kwargs)
        return checked
    return wrap

