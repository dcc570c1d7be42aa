#!/usr/bin/env bash
# README command 1: install what is missing, run the main job (quick infer_sweep, baseline then palu) on the
# embedded SmolLM2-135M, compare them, and say where the report is (its last line).
#   bash tools/quickstart.sh [llm_run options, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bash tools/setup.sh
group="quickstart-$(date +%Y%m%d-%H%M%S)"   # this invocation's runs only: the report compares them
for variant in baseline palu; do
  .venv/bin/python -m gcompress_bench.llm_run --variant "$variant" --suite infer_sweep \
    --model smollm2-135m --profile quick --exp-group "$group" --run-id "$variant" "$@"
done
.venv/bin/python -m gcompress_bench compare --exp-group "$group" --results-root results --out "reports/$group" >/dev/null
echo "runs: $PWD/results/$group/{baseline,palu}/run_summary.md"
echo "report: $PWD/reports/$group/report.md"
