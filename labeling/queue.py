"""The labeling queue: which task an annotator sees next, and saving what they decide.

Every decision is a new annotation row (append-only); an edit or an undo supersedes the earlier row. Each call
runs under the database lock in one transaction, so concurrent annotators never over-fill a task, and a label is
committed before the caller is told it was saved. `tasks.n_done` (annotators whose current decision is a label)
changes in the same transaction as the annotation that changes it.

Speed: with a million annotations a scan of the annotations table costs tens of milliseconds, so the per-key-press
path never scans it. `_Decisions` keeps, in memory, each active annotator's current decision per task; it is
brought up to date on every call from the rows with an id above the last one it saw (ids grow monotonically and
DuckDB's zone maps make that range read nearly free), so rows written by anyone (imports, resolutions, another
page) are seen without anyone having to notify it. Tasks are then picked from `tasks` alone, by n_done.
"""
from __future__ import annotations

import contextlib
import random
import weakref
from datetime import datetime, timedelta
from typing import Iterator

from labeling import ids
from labeling import queue_order
from storage.db import Database

VALUES = {"single": ("good", "bad"), "pair": ("a", "b", "tie", "both_bad"), "write": ("written",)}
NOT_LABELS = ("skip", "retracted")
CANDIDATES = 64            # tasks fetched per try; the first one not done by this annotator and not leased wins
BULK = 20_000             # more new annotations than this since the last call: forget and re-read instead
PROMPT_KEPT = 300          # characters of a shown prompt kept in memory for the history list


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


# -- what each annotator has decided, in memory ----------------------------------------------------------------------
class _Decisions:
    """Current decision (annotation id, value, source) per task for each annotator who used the queue, plus the
    kind of every task seen: view current_annotations, kept up to date row by row. Admin resolutions are not queue
    decisions and are left out."""

    def __init__(self) -> None:
        self.upto: int | None = None                    # every annotation id <= upto is reflected
        self.mine: dict[str, dict[str, tuple[int, str, str]]] = {}
        self.kinds: dict[str, str] = {}
        self.prompts: dict[str, str] = {}               # start of each shown task's prompt, for the history list

    def sync(self, db: Database) -> None:
        if self.upto is None:
            self.upto = int(db.scalar("SELECT coalesce(max(id), 0) FROM annotations"))
            return
        rows = db.fetchall("""SELECT id, task_id, annotator, value, source FROM annotations
                              WHERE id > ? ORDER BY id LIMIT ?""", [self.upto, BULK + 1])
        if len(rows) > BULK:    # e.g. a big import: re-reading each annotator when next asked is cheaper
            self.mine.clear()
            self.upto = int(db.scalar("SELECT max(id) FROM annotations"))
            return
        for aid, tid, who, value, source in rows:
            if who in self.mine and source != "resolution":
                self.mine[who][tid] = (aid, value, source)
            self.upto = aid

    def of(self, db: Database, annotator: str) -> dict[str, tuple[int, str, str]]:
        """This annotator's current decisions; the first call per annotator reads them from the database."""
        self.sync(db)
        got = self.mine.get(annotator)
        if got is None:
            # a row newer than upto (none, under the lock) would reach us with the next sync
            rows = db.fetchall("""
                SELECT a.task_id, a.id, a.value, a.source, t.kind
                FROM current_annotations a LEFT JOIN tasks t ON t.id = a.task_id
                WHERE a.annotator = ? AND a.source <> 'resolution' AND a.id <= ?""", [annotator, self.upto])
            got = self.mine[annotator] = {r[0]: (r[1], r[2], r[3]) for r in rows}
            self.kinds.update((r[0], r[4]) for r in rows if r[4])
        return got

    def kind_of(self, db: Database, task_ids: list[str]) -> dict[str, str]:
        missing = [t for t in task_ids if t not in self.kinds]
        if missing:
            self.kinds.update(db.fetchall("SELECT id, kind FROM tasks WHERE id IN (SELECT unnest(?))", [missing]))
        return {t: self.kinds.get(t) for t in task_ids}


_INDEX: "weakref.WeakKeyDictionary[Database, _Decisions]" = weakref.WeakKeyDictionary()


def _decisions(db: Database) -> _Decisions:
    with db.lock:
        return _INDEX.setdefault(db, _Decisions())


@contextlib.contextmanager
def _transaction(db: Database) -> Iterator[None]:
    """db.transaction(), except that inside a caller's own transaction (which may still roll back what we read or
    wrote) the in-memory decisions are dropped afterwards and re-read on the next call."""
    with db.lock:
        nested = db._in_tx > 0
        try:
            with db.transaction():
                yield
        finally:
            if nested:
                _INDEX.pop(db, None)
                queue_order.forget(db)


# -- next task -------------------------------------------------------------------------------------------------------
TASK_COLS = "t.id, t.kind, t.prompt_id, t.response_a, t.response_b, t.site, t.required, t.n_done"


def next_task(db: Database, annotator: str, kind: str | None = None, site: str | None = None,
              lease_s: int = 300, rng: random.Random | None = None, purpose: str = "label") -> dict | None:
    """The next task for this annotator, leased to them for lease_s seconds: never one they already labeled or
    skipped, never a complete one, never one whose open slots are all leased to others. A task already leased to
    them comes back first (a page reload shows the same task); then the mode's queue order (labeling/queue_order.py:
    model unsure first, disagreement first), and otherwise tasks closest to complete come first (finish what others
    started), then a per-annotator shuffle. `purpose` 'evaluation' serves the blind evaluation tasks (the Evaluate
    mode, always in the random order), which the labeling queues ('label') never show."""
    filters, fparams = " AND t.purpose = ?", [purpose]
    if kind:
        filters += " AND t.kind = ?"
        fparams.append(kind)
    only = own_site(db, annotator)
    if only is not None and site not in (None, only):
        return None                          # an annotator kept to a site is served nothing from other sites
    site = only or site
    if site:
        filters += " AND t.site = ?"
        fparams.append(site)
    now = _now()
    with _transaction(db):
        done = _decisions(db).of(db, annotator)
        db.execute("DELETE FROM leases WHERE expires_at <= ?", [now])
        leases = db.fetchall("SELECT task_id, annotator FROM leases")
        held: dict[str, int] = {}
        for tid, who in leases:
            if who != annotator:
                held[tid] = held.get(tid, 0) + 1
        own = [tid for tid, who in leases if who == annotator]

        def not_voted(tid: str) -> bool:
            return tid not in done or done[tid][1] == "retracted"

        def usable(r: tuple) -> bool:
            tid, required, n_done = r[0], r[6], r[7]
            return n_done < required and held.get(tid, 0) < required - n_done and not_voted(tid)

        row = None
        if own:
            rows = db.fetchall(f"SELECT {TASK_COLS} FROM tasks t WHERE t.id IN (SELECT unnest(?)){filters}",
                               [own, *fparams])
            row = next((r for r in rows if usable(r)), None)
        order = queue_order.order_of(db, kind) if purpose == "label" else "random"
        if row is None and order == "unsure":
            row = _first(lambda limit: queue_order.unsure_rows(db, TASK_COLS, filters, fparams, limit), usable,
                         len(done) + len(held))
        if row is None and order == "disagreement":
            row = _first_split(db, filters, fparams, usable, not_voted, held)
        if row is None:
            row = _pick(db, filters, fparams, usable, len(done) + len(held), rng or random.Random())
        if row is None:
            return None
        db.execute("DELETE FROM leases WHERE annotator = ? AND task_id <> ?", [annotator, row[0]])
        db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                   [row[0], annotator, now + timedelta(seconds=lease_s)])
        # a held pair shown again (a reload) keeps its sides: its order is drawn once per task and person
        return _task_view(db, row, rng or random.Random(f"{row[0]}|{annotator}"))


def _first(fetch, usable, n_excluded: int) -> tuple | None:
    """The first usable row of an ordered query `fetch(limit)`: CANDIDATES rows, then (when all of those were
    excluded) as many more as can be excluded, so the second read settles it."""
    limit = CANDIDATES
    while True:
        rows = fetch(limit)
        row = next((r for r in rows if usable(r)), None)
        if row is not None or len(rows) < limit or limit > n_excluded:
            return row
        limit = n_excluded + CANDIDATES + 1


def _first_split(db: Database, filters: str, fparams: list, usable, not_voted, held: dict) -> tuple | None:
    """Disagreement first: the first split task this annotator may take. A complete task whose votes are tied gets
    one more slot (a tie-breaker) for someone who has not voted on it, while nobody else holds it."""
    for r, tied_complete in queue_order.split_rows(db, TASK_COLS, filters, fparams):
        if not tied_complete and usable(r):
            return r
        if tied_complete and not held.get(r[0]) and not_voted(r[0]):
            db.execute("UPDATE tasks SET required = n_done + 1 WHERE id = ?", [r[0]])
            return (*r[:6], r[7] + 1, r[7])      # required is now n_done + 1
    return None


def _pick(db: Database, filters: str, fparams: list, usable, n_excluded: int, rng: random.Random) -> tuple | None:
    """First usable open task: started tasks (n_done > 0) before fresh ones, each scanned from a random position
    (so annotators spread over the queue) and wrapping around. Each query stops at the first CANDIDATES rows, so
    it reads a sliver of the table instead of sorting all of it."""
    n_rows = db.scalar("SELECT count(*) FROM tasks")
    start = rng.randrange(n_rows) if n_rows else 0
    for stage in ("t.n_done > 0", "t.n_done = 0"):
        for part in ("t.rowid >= ?", "t.rowid < ?"):
            row = _first(lambda limit: db.fetchall(f"""SELECT {TASK_COLS} FROM tasks t
                             WHERE {part} AND {stage} AND t.n_done < t.required{filters} LIMIT ?""",
                             [start, *fparams, limit]), usable, n_excluded)
            if row is not None:
                return row
    return None


def _task_view(db: Database, row: tuple, rng: random.Random, shown_order: str | None = None) -> dict:
    tid, kind, pid, ra, rb, site, required, n_done = row
    prompt = db.scalar("SELECT text FROM prompts WHERE id = ? LIMIT 1", [pid])
    idx = _decisions(db)
    if len(idx.prompts) > 100_000:
        idx.prompts.clear()
    idx.prompts[tid], idx.kinds[tid] = (prompt or "")[:PROMPT_KEPT], kind
    texts = dict(db.fetchall("SELECT id, text FROM responses WHERE prompt_id = ?", [pid])) if ra else {}
    text_a, text_b = texts.get(ra), texts.get(rb)
    view = {"task_id": tid, "kind": kind, "prompt": prompt, "site": site, "required": required, "n_done": n_done,
            "shown_order": None, "responses": []}
    if kind == "pair":
        order = shown_order if shown_order in ("ab", "ba") else rng.choice(("ab", "ba"))   # blind: random per showing
        view["shown_order"] = order
        view["responses"] = [text_a if c == "a" else text_b for c in order]
    elif ra:
        view["responses"] = [text_a]
    return view


def get_task(db: Database, task_id: str, shown_order: str | None = None) -> dict | None:
    row = db.fetchone(f"SELECT {TASK_COLS} FROM tasks t WHERE t.id = ?", [task_id])
    return None if row is None else _task_view(db, row, random.Random(), shown_order)


def needs_labels(db: Database, task_id: str) -> bool:
    """Whether the task still exists and still has a slot open (others may have completed it meanwhile)."""
    return bool(db.scalar("SELECT n_done < required FROM tasks WHERE id = ?", [task_id]))


def held(db: Database, annotator: str) -> dict | None:
    """The task this annotator holds (an unexpired lease) as {kind, purpose}, None if none: a reloaded Label page
    opens in that task's mode, where `next_task` serves it first (README: a reload shows the task you hold)."""
    row = db.fetchone("""SELECT t.kind, t.purpose FROM leases l JOIN tasks t ON t.id = l.task_id
                         WHERE l.annotator = ? AND l.expires_at > ? ORDER BY l.expires_at DESC LIMIT 1""",
                      [annotator, _now()])
    return None if row is None else {"kind": row[0], "purpose": row[1]}


def sites(db: Database) -> list[str]:
    """The sites that have tasks, in order: the Label page's queue filter and the Train page's data filter."""
    return [r[0] for r in db.fetchall("SELECT DISTINCT site FROM tasks WHERE site IS NOT NULL ORDER BY 1")]


def shown_order(db: Database, annotation_id: int) -> str | None:
    """How a decision's pair was shown ('ab' or 'ba'); None for other tasks or no such decision."""
    return db.scalar("SELECT shown_order FROM annotations WHERE id = ?", [int(annotation_id)])


# -- decisions -------------------------------------------------------------------------------------------------------
def _counted(value: str | None) -> int:
    return int(value is not None and value not in NOT_LABELS)


def save_annotation(db: Database, task_id: str, annotator: str, value: str, text: str | None = None,
                    shown_order: str | None = None, time_ms: int | None = None, source: str = "app",
                    run_id: str | None = None, site: str | None = None) -> int:
    """Record a decision (committed before return) superseding this annotator's current one on the task, and
    keep tasks.n_done in step. Pair values are canonical (a = response_a whichever side it was shown on).
    Refused with a LabelError (nothing written) for an unknown task, a wrong value, an empty written answer, or a
    new label on a task that already has all it needs. Returns the annotation id."""
    if shown_order is not None and shown_order not in ("ab", "ba"):
        raise LabelError(f"shown_order must be 'ab' or 'ba', not {shown_order!r}.")
    with _transaction(db):
        task = db.fetchone("SELECT rowid, kind, required, n_done, site FROM tasks WHERE id = ?", [task_id])
        if task is None:
            raise LabelError("That task no longer exists.")
        rowid, kind, required, n_done, task_site = task
        if value not in VALUES[kind] + ("skip",):
            raise LabelError(f"{value!r} is not a label for a {kind} task (use {', '.join(VALUES[kind])}).")
        if kind == "write" and value == "written" and not (text or "").strip():
            raise LabelError("The answer is empty: write the ideal response first.")
        idx = _decisions(db)
        cur = idx.of(db, annotator).get(task_id)
        delta = _counted(value) - _counted(cur[1] if cur else None)
        if delta > 0 and n_done >= required:
            raise LabelError("This task already has all the labels it needs; it was completed by others.")
        if source in ("app", "edit"):
            _check_reach(db, task_id, annotator, task_site, delta, required - n_done, source)
        aid = db.scalar("""INSERT INTO annotations (task_id, annotator, value, text, shown_order, time_ms, source,
                               supersedes, run_id, site)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                        [task_id, annotator, value, text, shown_order, time_ms,
                         source, cur[0] if cur else None, run_id, site or task_site])
        if delta:
            db.execute("UPDATE tasks SET n_done = n_done + ? WHERE rowid = ?", [delta, rowid])
        db.execute("DELETE FROM leases WHERE task_id = ? AND annotator = ?", [task_id, annotator])
        idx.kinds[task_id] = kind
    return int(aid)


def own_site(db: Database, annotator: str) -> str | None:
    """The site an annotator is kept to (accounts with site_only), None for everyone else."""
    return db.scalar("SELECT site FROM annotators WHERE name = ? AND coalesce(site_only, FALSE)", [annotator])


def _check_reach(db: Database, task_id: str, annotator: str, task_site: str | None, delta: int, open_slots: int,
                 source: str) -> None:
    """A queue decision is refused on another site's task for an annotator kept to a site, and an edit that turns
    a skip into a label is refused while the open slots are leased to others (it would take over their task)."""
    only = own_site(db, annotator)
    if only is not None and task_site != only:
        raise LabelError(f"Your account labels only tasks of site {only}; this task is from another site.")
    if source == "edit" and delta > 0:
        held = db.scalar("SELECT count(*) FROM leases WHERE task_id = ? AND annotator <> ? AND expires_at > ?",
                         [task_id, annotator, _now()])
        if held >= open_slots:
            raise LabelError("Another annotator is working on that task right now; change this decision once "
                             "they are done.")


def make_room(db: Database, task_id: str, annotator: str) -> None:
    """One more slot on a complete task for this annotator, unless their current decision on it is already a label:
    the Try page records every opinion, also on an answer that already has all the labels a queue asks for."""
    with _transaction(db):
        cur = _decisions(db).of(db, annotator).get(task_id)
        if not _counted(cur[1] if cur else None):
            db.execute("UPDATE tasks SET required = n_done + 1 WHERE id = ? AND n_done >= required", [task_id])


def skip(db: Database, task_id: str, annotator: str) -> int:
    """Not for me: the task goes back to the others and is not shown to this annotator again."""
    return save_annotation(db, task_id, annotator, "skip")


def undo_last(db: Database, annotator: str, lease_s: int = 300) -> dict | None:
    """Withdraw this annotator's most recent current decision (a 'retracted' row superseding it) and lease the
    task to them again; returns that task so the page shows it again, with the same pair order and, as
    `previous_text`, the answer they had written (None for other decisions), to fix rather than start over."""
    with _transaction(db):
        mine = _decisions(db).of(db, annotator)
        live = [(aid, tid) for tid, (aid, value, source) in mine.items()
                if value != "retracted" and source != "import"]
        if not live:
            return None
        aid, tid = max(live)
        value, order, text = db.fetchone("SELECT value, shown_order, text FROM annotations WHERE id = ?", [aid])
        db.execute("""INSERT INTO annotations (task_id, annotator, value, source, supersedes, shown_order)
                      VALUES (?, ?, 'retracted', 'app', ?, ?)""", [tid, annotator, aid, order])
        if _counted(value):
            db.execute("UPDATE tasks SET n_done = n_done - 1 WHERE id = ?", [tid])
        db.execute("DELETE FROM leases WHERE annotator = ?", [annotator])
        db.execute("INSERT INTO leases VALUES (?, ?, ?)", [tid, annotator, _now() + timedelta(seconds=lease_s)])
        return {**get_task(db, tid, order), "previous_text": text}


def edit_annotation(db: Database, annotation_id: int, annotator: str, value: str, text: str | None = None) -> int:
    """Change an earlier decision: a new row that supersedes this annotator's current one on that task (only
    your own decisions can be changed)."""
    row = db.fetchone("SELECT task_id, annotator, shown_order FROM annotations WHERE id = ?", [annotation_id])
    if row is None:
        raise LabelError(f"There is no decision #{annotation_id}.")
    tid, owner, order = row
    if owner != annotator:
        raise LabelError("You can only change your own decisions.")
    return save_annotation(db, tid, annotator, value, text=text, shown_order=order, source="edit")


def history(db: Database, annotator: str, limit: int = 10) -> list[dict]:
    """This annotator's last `limit` current decisions (not undone, not imported), newest first; `prompt` is the
    start of the task's prompt."""
    with _transaction(db):
        idx = _decisions(db)
        mine = idx.of(db, annotator)
        last = sorted((aid for aid, value, source in mine.values() if value != "retracted" and source != "import"),
                      reverse=True)[:limit]
        if not last:
            return []
        rows = db.records(f"""SELECT id, task_id, value, text, shown_order, created_at FROM annotations
                              WHERE id >= ? AND id IN ({', '.join('?' * len(last))})""", [min(last), *last])
        missing = [r["task_id"] for r in rows if r["task_id"] not in idx.prompts]
        if missing:
            for tid, kind, prompt in db.fetchall(f"""SELECT t.id, t.kind, p.text FROM tasks t JOIN prompts p
                    ON p.id = t.prompt_id WHERE t.id IN ({', '.join('?' * len(missing))})""", missing):
                idx.prompts[tid], idx.kinds[tid] = (prompt or "")[:PROMPT_KEPT], kind
    out = [{"id": r["id"], "task_id": r["task_id"], "kind": idx.kinds.get(r["task_id"]), "value": r["value"],
            "text": r["text"], "shown_order": r["shown_order"], "created_at": r["created_at"],
            "prompt": idx.prompts.get(r["task_id"], "")} for r in rows]
    return sorted(out, key=lambda r: -r["id"])


def progress(db: Database, annotator: str, kind: str | None = None, purpose: str = "label") -> dict:
    """mine: tasks this annotator labeled; everyone: labels counted on tasks; remaining: open label slots;
    total: tasks (all restricted to `kind` when given, and to the queue's `purpose`, see `next_task`)."""
    with _transaction(db):
        idx = _decisions(db)
        labeled = [tid for tid, (_, value, _s) in idx.of(db, annotator).items() if _counted(value)]
        if kind:
            kinds = idx.kind_of(db, labeled)
            labeled = [t for t in labeled if kinds[t] == kind]
        row = db.fetchone(f"""SELECT count(*), coalesce(sum(n_done), 0),
                                     coalesce(sum(greatest(required - n_done, 0)), 0)
                              FROM tasks t WHERE t.purpose = ? {'AND t.kind = ?' if kind else ''}""",
                          [purpose, kind] if kind else [purpose])
        evaluation = {r[0] for r in db.fetchall("SELECT id FROM tasks WHERE purpose = 'evaluation'")}
        labeled = [t for t in labeled if (t in evaluation) == (purpose == "evaluation")]
    return {"mine": len(labeled), "total": int(row[0]), "everyone": int(row[1]), "remaining": int(row[2])}


def create_task(db: Database, kind: str, prompt: str, responses: list[str], site: str | None = None,
                required: int | None = None, source: str = "app", run_id: str | None = None,
                origins: list[str] | None = None, purpose: str = "label") -> str:
    """Make (or find) a task for this content: used by generation jobs, blind A/B evaluation and the playground.
    Content ids match the importer's, so the same prompt and answers are the same task; an evaluation task
    (purpose 'evaluation', see `next_task`) has an id of its own, so it never merges with a labeling task."""
    if kind not in VALUES:
        raise LabelError(f"Unknown task kind {kind!r}.")
    if not (prompt or "").strip():
        raise LabelError("A task needs a prompt.")
    need = {"single": 1, "pair": 2, "write": 0}[kind]
    if len(responses) < need:
        raise LabelError(f"A {kind} task needs {need} response(s).")
    if required is not None and int(required) < 1:
        raise LabelError("A task needs at least 1 label (required >= 1).")
    pid = ids.prompt_id(prompt, site)
    req = int(required or db.get_setting("default_required", "1") or 1)
    rids = [ids.response_id(pid, r) for r in responses[:max(need, 1 if kind == "write" and responses else 0)]]
    tid = ids.task_id(kind, pid, rids[0] if rids else None, rids[1] if len(rids) > 1 else None,
                      "evaluation" if purpose == "evaluation" else "")
    with db.transaction():
        if not db.scalar("SELECT count(*) FROM prompts WHERE id = ?", [pid]):
            db.execute("INSERT INTO prompts (id, text, site, source) VALUES (?, ?, ?, ?)", [pid, prompt, site, source])
        for i, (rid, text) in enumerate(zip(rids, responses)):
            if not db.scalar("SELECT count(*) FROM responses WHERE id = ?", [rid]):
                origin = origins[i] if origins and i < len(origins) else source
                db.execute("INSERT INTO responses (id, prompt_id, text, origin, run_id) VALUES (?, ?, ?, ?, ?)",
                           [rid, pid, text, origin, run_id])
        if not db.scalar("SELECT count(*) FROM tasks WHERE id = ?", [tid]):
            db.execute("""INSERT INTO tasks (id, kind, prompt_id, response_a, response_b, site, required, batch,
                                             purpose) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                       [tid, kind, pid, rids[0] if rids else None, rids[1] if len(rids) > 1 else None, site, req,
                        source, purpose])
    return tid
