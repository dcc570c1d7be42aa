#!/usr/bin/env bash
# README command 2: install the test dependencies and run the tests (CPU; GPU tests skip without CUDA).
#   bash tools/test.sh [pytest options, e.g. -m "not system" or -k report]
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac   # the header above
cd "$(dirname "$0")/.."
bash tools/setup.sh
# One worker per core, at most 4 (each loads models); tests that share a session's runs or a local Slurm stay on
# one worker (tests/conftest.py). A later `-n 0` runs them all in this process.
workers=$(nproc); [ "$workers" -le 4 ] || workers=4
exec .venv/bin/python -m pytest tests -n "$workers" --dist loadgroup "$@"
