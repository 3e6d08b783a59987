#!/usr/bin/env bash
# Create .venv/ at the repo root if missing and (re)install the pinned requirements only when the
# requirement files changed since the last successful install, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt requirements-lock.txt | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pinned requirements into $VENV (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c requirements-lock.txt -r requirements-dev.txt
  echo "$want" > "$STAMP"
else
  echo "[setup] $VENV is up to date"
fi
