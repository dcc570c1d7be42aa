#!/usr/bin/env bash
# README command 2: install the test dependencies and run the tests (CPU; GPU tests skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest tests "$@"
