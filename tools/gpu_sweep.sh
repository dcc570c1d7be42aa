#!/usr/bin/env bash
# Time several variants of the infer_sweep on this GPU node, one run after the other, then write their
# comparison report. Never two timing runs at once on one host: processes that share the host's CPUs
# slow each other's kernel launches (eager decode most), so a second gpu_sweep on the same host waits
# for the first (a lock file, GPU_SWEEP_LOCK, default /tmp/gcompress-bench-gpu-sweep.lock).
#
#   bash tools/gpu_sweep.sh [--variants V,...] [--run NAME=OPTIONS]... [--exp-group G] [--results-root DIR]
#     [--reports-root DIR] [--time-limit SECONDS] [--no-check] [llm_run options] [-- llm_run options]
#
#   --variants baseline,palu,asvd  one run per variant, named after it (run id = the variant)
#   --run NAME=OPTIONS             one run named NAME with its own llm_run options, split at spaces (no
#                                  quoting), e.g. --run "palu-latent=--variant palu --palu-cache latent";
#                                  repeat for more. Runs go in the order given, --variants and --run mixed.
#   --exp-group G                  default gpu-<date>-<time>; run NAME lands in DIR/G/NAME, which must not exist
#   --results-root DIR             default results/ of this repository (--out DIR is the same)
#   --reports-root DIR             the report goes to DIR/G/ (default reports/ of this repository)
#   --time-limit SECONDS           stop a run after SECONDS (SIGINT: its run dir keeps every finished cell);
#                                  no limit unless given
#   --no-check                     skip the offline check of every run's options before the first one starts
#   Every other option, and everything after `--`, goes to every run's `python -m gcompress_bench.llm_run`
#   (--model, --profile, --device, --decode-mode, the grid, --warmup/--iters/--trials, method options;
#   `python -m gcompress_bench.llm_run --help` lists them); a further `--` passes the rest on to pytest.
#
# Each run's output goes to the terminal and to REPORTS/G/logs/NAME.log. At the end
# tools/plot_llm_results.py --exp-group G --results-root DIR --out REPORTS/G writes REPORTS/G/report.md
# (every run of the group: baseline as the reference, the others grouped by method and options), headed
# by a table of this sweep's runs, and the last line printed says where it is.
# Exit: 0 every run ok and the report written; 1 a run failed or no report; 2 usage error (one line);
# 130 interrupted (the runs that finished are still reported).
#
#   bash tools/gpu_sweep.sh --model llama3-8b-shape --profile full --variants baseline,palu,asvd
#   bash tools/gpu_sweep.sh --model llama3-8b-shape --profile long --decode-mode compiled \
#     --variants baseline,palu --run "palu-latent=--variant palu --palu-cache latent" --time-limit 3600
set -uo pipefail
usage() { echo "gpu_sweep: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || usage "$1 needs a value; see the header of $0"; }
repo=$(cd "$(dirname "$0")/.." && pwd)
group="gpu-$(date +%Y%m%d-%H%M%S)" root="$repo/results" reports="$repo/reports" limit="" check=1
names=() opts=() common=() pytest_args=()
add_run() {  # NAME OPTIONS
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || usage "run name '$1' is not allowed; allowed: letters, digits, '.', '_', '-'"
  for n in "${names[@]}"; do [ "$n" != "$1" ] || usage "run name '$1' is given twice"; done
  names+=("$1"); opts+=("$2")
}
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --variants) need "$@"; for v in ${2//,/ }; do add_run "$v" "--variant $v"; done; shift 2 ;;
    --run) need "$@"; [[ $2 == ?*=* ]] || usage "--run: '$2' is not NAME=OPTIONS"; add_run "${2%%=*}" "${2#*=}"; shift 2 ;;
    --exp-group) need "$@"; group=$2; shift 2 ;;
    --results-root|--out) need "$@"; root=$(realpath -m "$2"); shift 2 ;;
    --reports-root) need "$@"; reports=$(realpath -m "$2"); shift 2 ;;
    --time-limit) need "$@"; limit=$2; shift 2 ;;
    --no-check) check=0; shift ;;
    --) shift; while [ $# -gt 0 ] && [ "$1" != -- ]; do common+=("$1"); shift; done
        [ $# -eq 0 ] || { shift; pytest_args=("$@"); }; break ;;
    *) common+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || usage "no runs: give --variants V,... and/or --run NAME=OPTIONS; see the header of $0"
[ -z "$limit" ] || [[ $limit =~ ^[1-9][0-9]*$ ]] || usage "--time-limit: '$limit' is not allowed; allowed: a positive number of seconds"
[[ $group =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || usage "--exp-group: '$group' is not allowed; allowed: letters, digits, '.', '_', '-'"
for a in "${common[@]}"; do
  case "$a" in
    --variant|--variant=*) usage "--variant: name the runs with --variants or --run NAME=OPTIONS instead" ;;
    --run-id*) usage "--run-id: each run's id is its name (--variants, --run NAME=OPTIONS)" ;;
    --exp-group*|--results-root*|--out|--out=*) usage "${a%%=*}: give it to the sweep, before any --; see the header of $0" ;;
  esac
done
for i in "${!names[@]}"; do
  for a in ${opts[$i]}; do
    case "$a" in
      --run-id*|--exp-group*|--results-root*|--out|--out=*) usage "--run ${names[$i]}: ${a%%=*} is set by the sweep; see the header of $0" ;;
    esac
  done
  [ ! -e "$root/$group/${names[$i]}" ] || usage "run '${names[$i]}' already exists in $root/$group; results are never overwritten: pick another --exp-group"
done
py=${GC_VENV:-$repo/.venv}/bin/python
[ -x "$py" ] || py=python3

# llm_run arguments of run i (its own options come after the common ones, so they win)
run_args() {
  local -a own; read -r -a own <<<"${opts[$1]}"
  args=(-m gcompress_bench.llm_run --results-root "$root" --exp-group "$group" --run-id "${names[$1]}"
        "${common[@]}" "${own[@]}")
}
to_pytest=(); [ ${#pytest_args[@]} -eq 0 ] || to_pytest=(-- "${pytest_args[@]}")

# every run's options are checked offline before the first run starts: a typo costs seconds, not a sweep
if [ $check = 1 ]; then
  for i in "${!names[@]}"; do
    run_args "$i"
    out=$("$py" "${args[@]}" --check-only "${to_pytest[@]}" 2>&1)
    case $? in
      0) ;;
      1) echo "gpu_sweep: WARNING: run ${names[$i]} would fall back:" >&2; grep 'FALLBACK:' <<<"$out" >&2 ;;
      *) usage "run ${names[$i]} would stop at once: $(grep -m 1 -oE '(gcompress-bench|llm_run)[^!]*[^! ]' <<<"$out" || tail -n 1 <<<"$out")" ;;
    esac
  done
fi

out_dir="$reports/$group"
mkdir -p "$root/$group" "$out_dir/logs" || usage "cannot create $root/$group or $out_dir/logs"
lock=${GPU_SWEEP_LOCK:-/tmp/gcompress-bench-gpu-sweep.lock}
if command -v flock >/dev/null; then
  { [ -e "$lock" ] || { touch "$lock" && chmod a+r "$lock"; }; } 2>/dev/null
  [ -r "$lock" ] || usage "cannot read the lock file $lock (GPU_SWEEP_LOCK moves it)"
  exec 9<"$lock"
  flock -n 9 || { echo "gpu_sweep: another sweep on this host holds $lock; waiting for it to finish"; flock 9; }
else
  echo "gpu_sweep: WARNING: flock is not on PATH: nothing stops another sweep on this host from timing at the same time" >&2
fi

interrupted=0
trap 'interrupted=1' INT TERM
limiter=(); [ -z "$limit" ] || limiter=(timeout --foreground -s INT -k 120 "$limit")
status=0 table=()
for i in "${!names[@]}"; do
  if [ $interrupted = 1 ]; then table+=("| ${names[$i]} | \`${opts[$i]}\` | not run (sweep interrupted) | — | — |"); continue; fi
  name=${names[$i]} log="$out_dir/logs/${names[$i]}.log"
  run_args "$i"
  echo "gpu_sweep: [$((i + 1))/${#names[@]}] $name: ${opts[$i]} ${common[*]}"
  start=$SECONDS
  PYTHONUNBUFFERED=1 "${limiter[@]}" "$py" "${args[@]}" "${to_pytest[@]}" 2>&1 | tee -i "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) state=ok ;;
    124|137) state="**stopped at the time limit** (${limit} s)"; status=1 ;;
    *) state="**FAILED** (exit $rc)"; status=1 ;;
  esac
  [ $interrupted = 0 ] || state="**interrupted** (exit $rc)"
  table+=("| $name | \`${opts[$i]}\` | $state | $((SECONDS - start)) | logs/$name.log |")
  echo "gpu_sweep: $name: $state after $((SECONDS - start)) s; run dir $root/$group/$name"
done
[ -z "${common[*]}" ] || common_line="Options of every run: \`${common[*]}\`${pytest_args:+ (pytest: \`${pytest_args[*]}\`)}"
{
  echo "## Runs of this sweep"; echo
  echo "${common_line:-No options common to every run.}"; echo
  echo "| run | options | state | wall s | log |"; echo "|---|---|---|---|---|"
  printf '%s\n' "${table[@]}"
} > "$out_dir/runs.md"
[ -z "$(command -v flock)" ] || flock -u 9

"$py" "$repo/tools/plot_llm_results.py" --exp-group "$group" --results-root "$root" --out "$out_dir" --jobs "$out_dir/runs.md"
rc=$?
if [ $rc != 0 ] && [ ${#names[@]} = 1 ]; then
  echo "gpu_sweep: no comparison: one run; a report needs a baseline run and another in $root/$group"
elif [ $rc != 0 ]; then
  status=1; echo "gpu_sweep: the report could not be built (plot_llm_results exit $rc; see above)"
fi
for name in "${names[@]}"; do
  [ ! -f "$root/$group/$name/run_summary.md" ] || echo "gpu_sweep: run summary: $root/$group/$name/run_summary.md"
done
[ $interrupted = 0 ] || status=130
echo "gpu_sweep: report: $out_dir/report.md (runs: $out_dir/runs.md)"
exit $status
