#!/usr/bin/env bash
# README command 1: install what is missing, run the main job (quick infer_sweep, baseline then
# palu) on the embedded SmolLM2-135M, and say where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
for variant in baseline palu; do
  .venv/bin/python -m gcompress_bench.llm_run --variant "$variant" --suite infer_sweep \
    --model smollm2-135m --profile quick --exp-group quickstart "$@"
done
echo "results: $(ls -d "$PWD"/results/quickstart/*/ | tail -n 2 | sed 's|$|run_summary.md|' | tr '\n' ' ')"
