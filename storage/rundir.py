"""The run-directory contract between the app and a job process.

A job (`python -m training RUN_DIR`) never touches DuckDB; its whole world is its run directory:

    config.json            in:  the JobConfig (training/config.py), written by the app
    data/train.parquet     in:  frozen snapshot rows; columns prompt/chosen/rejected (pairs),
                                prompt/completion/label (unpaired, label bool), or prompt/completion (sft);
                                optional example_id, task_id, site
                                (kind=score: task_id, kind pair|single, prompt, response_a, response_b,
                                optional ref_logp_a, ref_logp_b from an earlier score job of the same base)
    data/eval.parquet      in:  optional held-out rows, same columns
    status.json            out: state, pid, heartbeat (unix time), step, total, eta_s, error, updated
    metrics.jsonl          out: one JSON object per logged step: {"step", "time", "split", "site"?, name: value}
    instances/*.parquet    out: per example and step: INSTANCE_COLUMNS
    adapter/ or model/     out: the trained LoRA adapter (PEFT folder) or full model
    checkpoints/step-N/    out: resumable state
    generations.parquet    out: kind=generate (prompt_id, prompt, response, sample, ...)
    eval.json              out: kind=evaluate report
    scores.parquet         out: kind=score (task_id, score, unsure, method, ref_logp_a, ref_logp_b): the labeling
                                queue's model-unsure order
    log.txt                out: the job's console output

Everything here is plain files written atomically (write to a temp name, then rename), so a reader never sees a
half-written status, and the app can re-attach to a job after a restart by reading status.json (pid + heartbeat).
This module imports neither torch nor duckdb.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
INSTANCES = "instances"
DATA = "data"
TRAIN_DATA = "data/train.parquet"
EVAL_DATA = "data/eval.parquet"
ADAPTER = "adapter"
MODEL = "model"
CHECKPOINTS = "checkpoints"
GENERATIONS = "generations.parquet"
EVAL_REPORT = "eval.json"
SCORES = "scores.parquet"
LOG = "log.txt"

STATES = ("queued", "running", "stopping", "stopped", "failed", "finished")
FINAL_STATES = ("stopped", "failed", "finished")
HEARTBEAT_S = 2.0          # a running job rewrites status.json at least this often
STALE_AFTER_S = 30.0       # no heartbeat for this long and no live pid: the job is dead

INSTANCE_COLUMNS = {
    "step": "int64",          # optimizer step the value was computed at
    "example_id": "string",   # row id in data/train.parquet (or its example_id column)
    "task_id": "string",      # labeling task it came from, if any: links a chart point back to the item
    "site": "string",
    "side": "string",         # chosen | rejected | desirable | undesirable | sft
    "policy_logp": "float64", # summed log pi_theta(y|x) over response tokens
    "ref_logp": "float64",    # summed log pi_ref(y|x) (MRPO: the virtual reference)
    "n_tokens": "int64",
    "m_theta": "float64",     # (policy_logp - ref_logp) / n_tokens
    "beta_i": "float64",      # per-instance beta actually used (eps-DPO beta tilde; else the global beta)
    "loss": "float64",        # per-example loss
}


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    # one temporary file per writer thread: a job's heartbeat thread and its main loop both write status.json
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_config(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / CONFIG)


def read_status(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / STATUS)


def write_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge fields into status.json (atomic). Always stamps `heartbeat` with the current time."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {}
    status.update(fields)
    status["heartbeat"] = time.time()
    write_json_atomic(run_dir / STATUS, status)
    return status


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one metrics line. Lines are written whole with a single write so a tailing reader that stops at
    the last newline never sees a partial record."""
    line = json.dumps(record, default=float) + "\n"
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Records appended since byte `offset`, and the new offset (only complete lines are consumed)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    records = []
    for line in chunk[: end + 1].splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records, offset + end + 1


def write_instances(run_dir: str | Path, step: int, rows: Iterable[dict], tag: str = "") -> Path:
    """Write one Parquet file of per-instance values for `step` (atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    out_dir = Path(run_dir) / INSTANCES
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = {c: [r.get(c) for r in rows] for c in INSTANCE_COLUMNS}
    types = {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64()}
    table = pa.table({c: pa.array(v, type=types[INSTANCE_COLUMNS[c]]) for c, v in cols.items()})
    name = f"step-{step:07d}{('-' + tag) if tag else ''}.parquet"
    tmp = out_dir / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out_dir / name)
    return out_dir / name


def instance_files(run_dir: str | Path) -> list[Path]:
    d = Path(run_dir) / INSTANCES
    return sorted(d.glob("step-*.parquet")) if d.exists() else []


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def is_alive(status: dict | None, now: float | None = None) -> bool:
    """A job is alive if its pid exists and its heartbeat is fresh."""
    if not status or status.get("state") in FINAL_STATES:
        return False
    now = time.time() if now is None else now
    return pid_alive(status.get("pid")) and now - float(status.get("heartbeat", 0)) < STALE_AFTER_S
