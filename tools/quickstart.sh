#!/usr/bin/env bash
# README command 1: install what is missing, run the main job on the embedded model, say where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m gcompress_bench.llm_run --variant baseline --suite infer_sweep \
  --model smollm2-135m --profile quick --exp-group quickstart "$@"
