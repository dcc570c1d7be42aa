#!/usr/bin/env bash
# The H200 measurement behind the infer_sweep tables in docs/PERFORMANCE.md: llama3-8b-shape,
# full profile, baseline on GPU 0 and palu (gs 4, ratio 0.7) on GPU 1 of one host, concurrently,
# then the timer-fidelity check. Extra arguments go to both pytest runs (e.g. --trials 1).
# Usage (device tool, kind nvidia-h200-x2): bash tools/h200_infer_sweep.sh OUTDIR [pytest options]
set -uo pipefail
out=$1; shift
limit=${SWEEP_LIMIT_S:-520}
for v in baseline palu; do
  gpu=$([ $v = baseline ] && echo 0 || echo 1)
  CUDA_VISIBLE_DEVICES=$gpu PYTHONUNBUFFERED=1 timeout -s INT $limit python3 -m pytest benchmarks -m "prefill or decode" \
    --variant $v --model llama3-8b-shape --profile full --results-root "$out/runs" --exp-group h200 \
    --run-id $v "$@" > "$out/$v.log" 2>&1 &
done
wait
CUDA_VISIBLE_DEVICES=0 python3 tools/timer_fidelity.py --model llama3-8b-shape --batch 1 --seq-len 2048 \
  > "$out/fidelity.json" 2>"$out/fidelity.err"
for v in baseline palu; do
  python3 -c "from gcompress_bench.report import summarize; summarize('$out/runs/h200/$v')" 2>>"$out/$v.log"
done
tar -czf "$out/runs.tgz" -C "$out" runs && rm -rf "$out/runs"
