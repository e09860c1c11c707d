#!/usr/bin/env bash
# Create .venv (if missing) and install diffsparse with its test extras. Idempotent.
# torch is pinned to 2.13.0: on machines that keep a CPU wheel on disk pip takes it (fast);
# elsewhere pip downloads the platform's default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
