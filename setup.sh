#!/usr/bin/env bash
# Creates .venv and installs unitrans with its test extras. Idempotent.
# Usage: bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
