"""The labeling queue: which task an annotator sees next, and saving what they decide.

Every decision is a new annotation row (append-only); an edit or an undo supersedes the earlier row. The whole
"save and fetch the next task" path runs under the database lock in one transaction, so concurrent annotators
never over-fill a task, and a label is committed before the caller is told it was saved.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta

from labeling import ids
from storage.db import Database

VALUES = {"single": ("good", "bad"), "pair": ("a", "b", "tie", "both_bad"), "write": ("written",)}
NOT_LABELS = ("skip", "retracted")


class LabelError(ValueError):
    """A refused label, phrased for the annotator."""


def pair_value_from_shown(choice: str, shown_order: str) -> str:
    """Map a key pressed on the shown pair back to the canonical value: '1' = the left answer, '2' = the right,
    '3' = tie, '0' = both bad. shown_order 'ab' means response_a was shown on the left."""
    if choice in ("3", "tie"):
        return "tie"
    if choice in ("0", "both_bad"):
        return "both_bad"
    if choice not in ("1", "2") or shown_order not in ("ab", "ba"):
        raise LabelError(f"Unknown pair choice {choice!r}.")
    left, right = shown_order[0], shown_order[1]
    return left if choice == "1" else right


def _now() -> datetime:
    return datetime.now()


def next_task(db: Database, annotator: str, kind: str | None = None, site: str | None = None,
              lease_s: int = 300, rng: random.Random | None = None) -> dict | None:
    """The next task for this annotator, leased to them for lease_s seconds: never one they already labeled or
    skipped, never a complete one, never one whose open slots are all leased to others. Tasks closest to complete
    come first (finish what others started), then a per-annotator shuffle."""
    filters, params = [], [annotator, annotator]
    if kind:
        filters.append("t.kind = ?")
        params.append(kind)
    if site:
        filters.append("t.site = ?")
        params.append(site)
    now = _now()
    with db.transaction():
        row = db.fetchone(f"""
            WITH mine AS (
                SELECT task_id FROM annotations WHERE annotator = ?
                GROUP BY task_id HAVING arg_max(value, id) <> 'retracted'),
            held AS (
                SELECT task_id, count(*) AS n FROM leases WHERE expires_at > ? AND annotator <> ? GROUP BY task_id)
            SELECT t.id, t.kind, t.prompt_id, t.response_a, t.response_b, t.site, t.required, t.n_done
            FROM tasks t LEFT JOIN held h ON h.task_id = t.id
            WHERE t.n_done < t.required AND t.id NOT IN (SELECT task_id FROM mine)
              AND coalesce(h.n, 0) < t.required - t.n_done {''.join(' AND ' + f for f in filters)}
            ORDER BY t.n_done DESC, hash(t.id || ?) LIMIT 1""",
                          [params[0], now, *params[1:], annotator])
        if row is None:
            return None
        tid = row[0]
        db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", [tid, annotator, now + timedelta(seconds=lease_s)])
    return _task_view(db, row, rng or random.Random())


def _task_view(db: Database, row: tuple, rng: random.Random, shown_order: str | None = None) -> dict:
    tid, kind, pid, ra, rb, site, required, n_done = row
    texts = dict(db.fetchall("SELECT id, text FROM responses WHERE id IN (?, ?)", [ra or "", rb or ""]))
    prompt = db.scalar("SELECT text FROM prompts WHERE id = ?", [pid])
    view = {"task_id": tid, "kind": kind, "prompt": prompt, "site": site, "required": required, "n_done": n_done,
            "shown_order": None, "responses": []}
    if kind == "pair":
        order = shown_order or rng.choice(("ab", "ba"))   # blind: random side per showing, stored with the label
        view["shown_order"] = order
        view["responses"] = [texts.get(ra if c == "a" else rb) for c in order]
    elif ra:
        view["responses"] = [texts.get(ra)]
    return view


def get_task(db: Database, task_id: str, shown_order: str | None = None) -> dict | None:
    row = db.fetchone("SELECT id, kind, prompt_id, response_a, response_b, site, required, n_done FROM tasks "
                      "WHERE id = ?", [task_id])
    return None if row is None else _task_view(db, row, random.Random(), shown_order)


def _current(db: Database, task_id: str, annotator: str) -> tuple | None:
    return db.fetchone("SELECT id, value FROM annotations WHERE task_id = ? AND annotator = ? ORDER BY id DESC LIMIT 1",
                       [task_id, annotator])


def _refresh_done(db: Database, task_id: str) -> None:
    db.execute("""UPDATE tasks SET n_done = (
            SELECT count(*) FROM (SELECT arg_max(value, id) AS v FROM annotations WHERE task_id = ? GROUP BY annotator)
            WHERE v NOT IN ('skip', 'retracted'))
        WHERE id = ?""", [task_id, task_id])


def save_annotation(db: Database, task_id: str, annotator: str, value: str, text: str | None = None,
                    shown_order: str | None = None, time_ms: int | None = None, source: str = "app",
                    run_id: str | None = None, site: str | None = None) -> int:
    """Record a decision (committed before return). Returns the annotation id."""
    with db.transaction():
        task = db.fetchone("SELECT kind, required, n_done, site FROM tasks WHERE id = ?", [task_id])
        if task is None:
            raise LabelError("That task no longer exists.")
        kind, required, n_done, task_site = task
        if value not in VALUES[kind] + ("skip",):
            raise LabelError(f"{value!r} is not a label for a {kind} task (use {', '.join(VALUES[kind])}).")
        if kind == "write" and value == "written" and not (text or "").strip():
            raise LabelError("The answer is empty: write the ideal response first.")
        cur = _current(db, task_id, annotator)
        counted = cur is not None and cur[1] not in NOT_LABELS
        if value != "skip" and not counted and n_done >= required:
            raise LabelError("This task already has all the labels it needs; it was completed by others.")
        aid = db.scalar("""INSERT INTO annotations (task_id, annotator, value, text, shown_order, time_ms, source,
                               supersedes, run_id, site)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                        [task_id, annotator, value, text, shown_order, time_ms, source, cur[0] if cur else None,
                         run_id, site or task_site])
        _refresh_done(db, task_id)
        db.execute("DELETE FROM leases WHERE task_id = ? AND annotator = ?", [task_id, annotator])
    return int(aid)


def skip(db: Database, task_id: str, annotator: str) -> int:
    """Not for me: the task goes back to the others and is not shown to this annotator again."""
    return save_annotation(db, task_id, annotator, "skip")


def undo_last(db: Database, annotator: str) -> dict | None:
    """Withdraw this annotator's most recent decision (a 'retracted' row superseding it); returns that task so the
    page can show it again, with the same pair order."""
    with db.transaction():
        last = db.fetchone("""SELECT id, task_id, shown_order FROM annotations WHERE annotator = ?
                              AND value <> 'retracted' AND source <> 'import'
                              AND id NOT IN (SELECT supersedes FROM annotations WHERE supersedes IS NOT NULL)
                              ORDER BY id DESC LIMIT 1""", [annotator])
        if last is None:
            return None
        aid, tid, order = last
        db.execute("""INSERT INTO annotations (task_id, annotator, value, source, supersedes, shown_order)
                      VALUES (?, ?, 'retracted', 'app', ?, ?)""", [tid, annotator, aid, order])
        _refresh_done(db, tid)
    return get_task(db, tid, order)


def edit_annotation(db: Database, annotation_id: int, annotator: str, value: str, text: str | None = None) -> int:
    """Change an earlier decision: a new row that supersedes it (only your own, only the current one)."""
    row = db.fetchone("SELECT task_id, annotator, shown_order FROM annotations WHERE id = ?", [annotation_id])
    if row is None:
        raise LabelError(f"There is no decision #{annotation_id}.")
    tid, owner, order = row
    if owner != annotator:
        raise LabelError("You can only change your own decisions.")
    return save_annotation(db, tid, annotator, value, text=text, shown_order=order, source="edit")


def history(db: Database, annotator: str, limit: int = 10) -> list[dict]:
    """This annotator's last `limit` current decisions, newest first."""
    return db.records("""
        WITH cur AS (SELECT * FROM annotations WHERE annotator = ?
                     QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY id DESC) = 1)
        SELECT cur.id, cur.task_id, t.kind, cur.value, cur.text, cur.shown_order, cur.created_at, p.text AS prompt
        FROM cur JOIN tasks t ON t.id = cur.task_id JOIN prompts p ON p.id = t.prompt_id
        WHERE cur.value <> 'retracted' AND cur.source <> 'import'
        ORDER BY cur.id DESC LIMIT ?""", [annotator, limit])


def progress(db: Database, annotator: str, kind: str | None = None) -> dict:
    k = "AND t.kind = ?" if kind else ""
    p = [kind] if kind else []
    mine = db.scalar(f"""SELECT count(*) FROM (SELECT task_id, arg_max(value, id) v FROM annotations
                         WHERE annotator = ? GROUP BY task_id) m JOIN tasks t ON t.id = m.task_id
                         WHERE v NOT IN ('skip', 'retracted') {k}""", [annotator, *p])
    row = db.fetchone(f"""SELECT count(*), coalesce(sum(n_done), 0), coalesce(sum(greatest(required - n_done, 0)), 0)
                          FROM tasks t WHERE 1 = 1 {k}""", p)
    return {"mine": int(mine or 0), "total": int(row[0]), "everyone": int(row[1]), "remaining": int(row[2])}


def create_task(db: Database, kind: str, prompt: str, responses: list[str], site: str | None = None,
                required: int | None = None, source: str = "app", run_id: str | None = None,
                origins: list[str] | None = None) -> str:
    """Make (or find) a task for this content: used by generation jobs, blind A/B evaluation and the playground."""
    if kind not in VALUES:
        raise LabelError(f"Unknown task kind {kind!r}.")
    need = {"single": 1, "pair": 2, "write": 0}[kind]
    if len(responses) < need:
        raise LabelError(f"A {kind} task needs {need} response(s).")
    pid = ids.prompt_id(prompt, site)
    req = required or int(db.get_setting("default_required", "1") or 1)
    rids = [ids.response_id(pid, r) for r in responses[:max(need, 1 if kind == "write" and responses else 0)]]
    tid = ids.task_id(kind, pid, rids[0] if rids else None, rids[1] if len(rids) > 1 else None)
    with db.transaction():
        if not db.scalar("SELECT count(*) FROM prompts WHERE id = ?", [pid]):
            db.execute("INSERT INTO prompts (id, text, site, source) VALUES (?, ?, ?, ?)", [pid, prompt, site, source])
        for i, (rid, text) in enumerate(zip(rids, responses)):
            if not db.scalar("SELECT count(*) FROM responses WHERE id = ?", [rid]):
                origin = origins[i] if origins and i < len(origins) else source
                db.execute("INSERT INTO responses (id, prompt_id, text, origin, run_id) VALUES (?, ?, ?, ?, ?)",
                           [rid, pid, text, origin, run_id])
        if not db.scalar("SELECT count(*) FROM tasks WHERE id = ?", [tid]):
            db.execute("""INSERT INTO tasks (id, kind, prompt_id, response_a, response_b, site, required, batch)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                       [tid, kind, pid, rids[0] if rids else None, rids[1] if len(rids) > 1 else None, site, req,
                        source])
    return tid
