#!/usr/bin/env bash
# The H200 measurement behind the infer_sweep tables in docs/PERFORMANCE.md: llama3-8b-shape, full
# profile, baseline and palu (gs 4, ratio 0.7), then the timer-fidelity check.
#   PARALLEL=1 (default): baseline on GPU 0 and palu on GPU 1 of one host, at the same time
#   PARALLEL=0: one after the other on GPU 0 (no host-side interference between the two)
#   MARK: the cells (pytest -m), default "prefill or decode"; SWEEP_LIMIT_S: time limit per variant
# Usage: bash tools/h200_infer_sweep.sh OUTDIR [pytest options, e.g. --trials 1]
set -uo pipefail
out=$1; shift
limit=${SWEEP_LIMIT_S:-520}
sweep() {  # variant gpu
  CUDA_VISIBLE_DEVICES=$2 PYTHONUNBUFFERED=1 timeout -s INT "$limit" python3 -m pytest benchmarks \
    -m "${MARK:-prefill or decode}" --variant "$1" --model llama3-8b-shape --profile full \
    --results-root "$out/runs" --exp-group h200 --run-id "$1" "${@:3}" > "$out/$1.log" 2>&1
}
if [ "${PARALLEL:-1}" = 1 ]; then
  sweep baseline 0 "$@" & sweep palu 1 "$@" & wait
else
  sweep baseline 0 "$@"; sweep palu 0 "$@"
fi
CUDA_VISIBLE_DEVICES=0 python3 tools/timer_fidelity.py --model llama3-8b-shape --batch 1 --seq-len 2048 \
  > "$out/fidelity.json" 2>"$out/fidelity.err"
for v in baseline palu; do
  python3 tools/report.py "$out/runs/h200/$v" >>"$out/$v.log" 2>&1
done
tar -czf "$out/runs.tgz" -C "$out" runs && rm -rf "$out/runs"
