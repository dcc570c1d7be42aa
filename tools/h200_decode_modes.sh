#!/usr/bin/env bash
# H200 runs of the decode modes: llama3-8b-shape, one variant/cache path after the other on one GPU
# (never two at once: that inflates eager decode), each its own run dir, packed as OUTDIR/<TAG><path>.tgz.
#   PATHS: which of baseline, palu (full cache), latent (palu, latent cache); default all three;
#          alignN = palu without PaLU's rank rounding, physical dims padded to a multiple of N
#   RUN_LIMIT_S: time limit per run (SIGINT: the run dir keeps every finished cell)
# Usage: bash tools/h200_decode_modes.sh OUTDIR [pytest options, e.g. -m decode --decode-mode compiled]
set -uo pipefail
out=$1; shift
for path in ${PATHS:-baseline palu latent}; do
  case $path in
    baseline) args=(--variant baseline) ;;
    palu) args=(--variant palu) ;;
    latent) args=(--variant palu --palu-cache latent) ;;
    align*) args=(--variant palu --palu-rounding 1 --palu-align "${path#align}") ;;
  esac
  PYTHONUNBUFFERED=1 timeout -s INT "${RUN_LIMIT_S:-540}" python3 -m pytest benchmarks -p no:cacheprovider \
    --model llama3-8b-shape --profile "${PROFILE:-full}" --results-root "$out/runs" --exp-group h200 \
    --run-id "${TAG:-}$path" "${args[@]}" "$@" > "$out/${TAG:-}$path.log" 2>&1
  echo "$path: exit $? $(grep -c ' ok ' "$out/${TAG:-}$path.log") ok cells"
  # packed at once, one level under OUTDIR, so the whole output can be copied off the node as flat
  # archives, and a job stopped early by a time limit still keeps every finished run dir
  tar czf "$out/${TAG:-}$path.tgz" -C "$out/runs/h200" "${TAG:-}$path" && rm -rf "$out/runs/h200/${TAG:-}$path"
  grep -E "^\[" "$out/${TAG:-}$path.log" | tail -20
done
