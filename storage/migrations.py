"""Append-only schema migrations, applied in order, each in its own transaction with its record.

Data model (one DuckDB file per Preflab home):
- prompts / responses: imported or generated text; ids are content hashes, so re-imports deduplicate.
- tasks: one unit of labeling work. kind 'single' (one response: good/bad, KTO), 'pair' (response_a vs
  response_b: DPO), 'write' (write or edit the ideal response: SFT). `required` annotations per task.
- annotations: append-only. A change or an undo is a new row whose `supersedes` names the row it replaces;
  nothing is ever deleted. Values: single good|bad; pair a|b|tie|both_bad (a = response_a whatever side it was
  shown on, `shown_order` 'ab' or 'ba' records what the annotator saw); write 'written' with `text`; 'skip'.
  A person's current label on a task, and a task's current admin resolution, are rows of the view
  current_annotations (m004, where the rule is written); value 'retracted' means none.
- leases: a task shown to an annotator is reserved for them until expires_at.
- snapshots: frozen Parquet copies of the rows a run trains on, keyed by content hash.
- runs, run_scalars, run_instances: jobs and what the supervisor ingested from their run directories.
The bulk tables (prompts, responses, tasks, annotations, run_*) have no primary-key index on purpose: ids are
content hashes deduplicated by anti-join under the app's single writer lock, and DuckDB's ART index on hash
strings made bulk imports 40x slower while a scan of a million rows by id takes a few milliseconds.
Never edit a migration that has shipped; add a new one.
"""

MIGRATIONS: list[tuple[str, str]] = []


def migration(name: str, sql: str) -> None:
    MIGRATIONS.append((name, sql))


migration("m001_initial", """
CREATE TABLE settings (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE annotators (
    name VARCHAR PRIMARY KEY,
    password_hash VARCHAR,
    role VARCHAR NOT NULL CHECK (role IN ('annotator', 'admin')),
    site VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE imports (
    id VARCHAR PRIMARY KEY,
    file VARCHAR,
    format VARCHAR,
    site VARCHAR,
    n_rows INTEGER,
    n_new INTEGER,
    n_duplicates INTEGER,
    n_errors INTEGER,
    report VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE prompts (
    id VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    site VARCHAR,
    source VARCHAR,
    external_id VARCHAR,
    import_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE responses (
    id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    origin VARCHAR,
    run_id VARCHAR,
    import_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE tasks (
    id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL CHECK (kind IN ('single', 'pair', 'write')),
    prompt_id VARCHAR NOT NULL,
    response_a VARCHAR,
    response_b VARCHAR,
    site VARCHAR,
    required INTEGER NOT NULL DEFAULT 1,
    n_done INTEGER NOT NULL DEFAULT 0,
    batch VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE SEQUENCE annotation_ids START 1;
CREATE TABLE annotations (
    id BIGINT NOT NULL DEFAULT nextval('annotation_ids'),
    task_id VARCHAR NOT NULL,
    annotator VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    text VARCHAR,
    shown_order VARCHAR,
    time_ms INTEGER,
    source VARCHAR NOT NULL DEFAULT 'app',
    supersedes BIGINT,
    run_id VARCHAR,
    site VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE leases (
    task_id VARCHAR NOT NULL,
    annotator VARCHAR NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    PRIMARY KEY (task_id, annotator)
);

CREATE TABLE snapshots (
    id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    n_rows INTEGER,
    path VARCHAR,
    filters VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE runs (
    id VARCHAR PRIMARY KEY,
    name VARCHAR,
    kind VARCHAR NOT NULL,
    algorithm VARCHAR,
    config VARCHAR,
    snapshot_id VARCHAR,
    parent_id VARCHAR,
    run_dir VARCHAR,
    state VARCHAR NOT NULL DEFAULT 'queued',
    step INTEGER DEFAULT 0,
    total_steps INTEGER,
    error VARCHAR,
    pid INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);

CREATE TABLE run_scalars (
    run_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,
    site VARCHAR,
    split VARCHAR DEFAULT 'train',
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE run_instances (
    run_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    example_id VARCHAR,
    task_id VARCHAR,
    site VARCHAR,
    side VARCHAR,
    policy_logp DOUBLE,
    ref_logp DOUBLE,
    n_tokens INTEGER,
    m_theta DOUBLE,
    beta_i DOUBLE,
    loss DOUBLE
);
""")

# Runs the app did not start (a Flower coordinator's run directory under the app's runs folder): listed, charted,
# never launched by the supervisor.
migration("m002_run_origin", """
ALTER TABLE runs ADD COLUMN origin VARCHAR DEFAULT 'app';
""")

# Point lookups by id on every labeling decision (the task, its prompt, its answers) were full scans: 9 of the
# 22 ms of "save + next" on 100,000 tasks, and memory traffic that a training job on the next core slowed down.
LOOKUP_INDEXES = {"tasks_by_id": "tasks (id)", "prompts_by_id": "prompts (id)",
                  "responses_by_prompt": "responses (prompt_id)"}
migration("m003_lookup_indexes", "".join(f"CREATE INDEX {k} ON {v};\n" for k, v in LOOKUP_INDEXES.items()))

# The one rule for "a person's current label on a task", read by training data, agreement, the queue, the Data page,
# A/B win rates and the Runs page. A person's current decision on a task is their newest own annotation (any value:
# 'skip' and 'retracted' are kept, and readers that want labels leave them out). An admin's resolution is not a
# decision of theirs: a task's current resolution is its newest row of source 'resolution' (each supersedes the
# one before, whichever admin wrote it), a row of its own here. Where a task has one, it replaces the task's votes
# in what the task is labeled (labeling.dataset.deciding_labels); the votes stay, for agreement and the queue.
migration("m004_current_annotations", """
CREATE VIEW current_annotations AS
SELECT * FROM annotations WHERE source <> 'resolution'
QUALIFY row_number() OVER (PARTITION BY task_id, annotator ORDER BY id DESC) = 1
UNION ALL
SELECT * FROM annotations WHERE source = 'resolution'
QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY id DESC) = 1;
""")

# Accounts an admin can switch off (disabled: no login, no call), whose sessions end when the password changes or
# the account is disabled (session_epoch grows; a session started under an older epoch is refused), and annotators
# held to their own site (site_only: the queue serves and accepts only tasks of annotators.site). docs/security.md.
migration("m005_account_controls", """
ALTER TABLE annotators ADD COLUMN disabled BOOLEAN DEFAULT FALSE;
ALTER TABLE annotators ADD COLUMN session_epoch INTEGER DEFAULT 0;
ALTER TABLE annotators ADD COLUMN site_only BOOLEAN DEFAULT FALSE;
""")

# The evaluation set (labeling/evalset.py): the prompts every run is scored on and no run trains on. A version is
# frozen once made: adding or removing a prompt makes the next version (its whole prompt list). A snapshot records
# the version its training rows were selected against (their prompts are left out).
migration("m006_evaluation_set", """
CREATE TABLE evalset_versions (
    version INTEGER PRIMARY KEY,
    note VARCHAR,
    created_by VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE evalset_prompts (version INTEGER NOT NULL, prompt_id VARCHAR NOT NULL);
ALTER TABLE snapshots ADD COLUMN evalset_version INTEGER;
""")

# Blind human evaluation (labeling/blind_eval.py, labeling/arena.py): its pair tasks are tasks of purpose
# 'evaluation', served only in the Label page's Evaluate mode and never in a training selection unless an admin asks
# (labeling.dataset.training_rows(with_evaluation=True)). evaluation_tasks says which model wrote each side of such a
# task (model: a run id, or 'base'); an evaluation is an admin's request (its models, how many evaluation prompts) and
# evaluation_jobs the generate job that answers its prompts for each model. Earlier blind A/B tasks (Compare, batch
# 'ab:A:B') and side-by-side picks on the Try page (batch 'playground') become evaluation tasks here.
migration("m007_blind_evaluation", """
ALTER TABLE tasks ADD COLUMN purpose VARCHAR DEFAULT 'label';
CREATE TABLE evaluations (
    id VARCHAR PRIMARY KEY,
    name VARCHAR,
    models VARCHAR NOT NULL,
    n_prompts INTEGER,
    evalset_version INTEGER,
    state VARCHAR NOT NULL DEFAULT 'generating',
    error VARCHAR,
    created_by VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE evaluation_jobs (evaluation_id VARCHAR NOT NULL, model VARCHAR NOT NULL, run_id VARCHAR NOT NULL);
CREATE TABLE evaluation_tasks (
    evaluation_id VARCHAR NOT NULL,
    task_id VARCHAR NOT NULL,
    model_a VARCHAR NOT NULL,
    model_b VARCHAR NOT NULL
);
INSERT INTO evaluation_tasks
SELECT CASE WHEN t.batch = 'playground' THEN 'try' ELSE t.batch END, t.id,
       regexp_replace(ra.origin, '^[a-z]+:', ''), regexp_replace(rb.origin, '^[a-z]+:', '')
FROM tasks t JOIN responses ra ON ra.id = t.response_a JOIN responses rb ON rb.id = t.response_b
WHERE t.kind = 'pair' AND (t.batch LIKE 'ab:%' OR t.batch = 'playground')
  AND (ra.origin LIKE 'run:%' OR ra.origin LIKE 'playground:%')
  AND (rb.origin LIKE 'run:%' OR rb.origin LIKE 'playground:%');
UPDATE tasks SET purpose = 'evaluation' WHERE kind = 'pair' AND (batch LIKE 'ab:%' OR batch = 'playground');
""")

# Model-in-the-loop queue orders (labeling/queue_order.py): each open task's score from the newest `score` job
# (training/score.py), replaced whole when a newer one finishes. Used by the queue as an order, never shown to
# annotators. unsure: distance from the model's decision boundary (smaller = less sure).
migration("m008_task_scores", """
CREATE TABLE task_scores (
    task_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    score DOUBLE,
    unsure DOUBLE NOT NULL,
    method VARCHAR,
    scored_at TIMESTAMP DEFAULT current_timestamp
);
""")
