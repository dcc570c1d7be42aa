#!/usr/bin/env bash
# The overnight run: one Slurm job per variant x suite (default baseline,palu x infer_sweep,ppl,lmeval: six
# jobs), then a report job (--dependency=afterany) that compares every variant with the baseline, writes
# reports/<exp_group>/ and names every job that failed.
#   bash slurm/launch_llm_night.sh [--dry-run] [--model M] [--profile P] [--partition P] [--account A]
#     [--exp-group G] [--results-root DIR] [--reports-root DIR] [--no-gpu] [--shards N] [--tasks T] [--limit N]
#     [--variants baseline,palu,asvd] [--suites infer_sweep,ppl,lmeval] [--job-args "CLI options"]
#     [--allow-fallback] [--timing-node NODE] [--constraint FEATURES] [-- extra sbatch arguments]
# --variants takes baseline and any registered method, plug-ins named in GCOMPRESS_METHODS included, and --suites
# any registered job, plug-ins named in GCOMPRESS_SUITES included (the jobs inherit the environment). --job-args passes further llm_run/llm_eval options to every job, e.g.
# "--align-policy round:32 --asvd-ratio 0.85 --trials 1". Before anything is submitted, each non-baseline variant's
# jobs are checked offline with --check-only (baseline's when it is the only variant). A night whose data would fall
# back to a stand-in (an HF cache without WikiText-2 or a task's dataset) is not submitted, unless --allow-fallback:
# then the jobs run on the stand-ins, each record labelled FALLBACK. Timing is compared like with like only on one
# machine: --timing-node pins every timing job (infer_sweep, or a plug-in's timed suite) to one node (sbatch
# --nodelist), --constraint every job to one node type (sbatch --constraint); the report says whether the timing
# runs shared a node. Each job records its own end (job-<id>.json in the night's results folder), from which the
# report job's table is built: Slurm forgets a finished job after MinJobAge.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac   # the header above
usage() { echo "launch_llm_night: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || usage "$1 needs a value; see the header of $0"; }
repo=$(cd "$(dirname "$0")/.." && pwd)
dry=0 gpu=1 allow=0 shards="" pin=() group="night-$(date +%Y%m%d-%H%M%S)" root="$repo/results" reports="$repo/reports"
variants="baseline,palu"
suites="infer_sweep,ppl,lmeval" job_args=() cli_args=() sb=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --no-gpu) gpu=0; shift ;;
    --allow-fallback) allow=1; shift ;;
    --model|--profile|--tasks|--limit) need "$@"; job_args+=("$1" "$2"); shift 2 ;;
    --partition|--account|--constraint) need "$@"; sb+=("$1" "$2"); shift 2 ;;
    --timing-node) need "$@"; pin=(--nodelist "$2"); shift 2 ;;
    --exp-group) need "$@"; group=$2; shift 2 ;;
    --results-root) need "$@"; root=$(realpath -m "$2"); shift 2 ;;
    --reports-root) need "$@"; reports=$(realpath -m "$2"); shift 2 ;;
    --shards) need "$@"; shards=$2; shift 2 ;;
    --variants) need "$@"; variants=$2; shift 2 ;;
    --suites) need "$@"; suites=$2; shift 2 ;;
    --job-args) [ $# -ge 2 ] || usage "--job-args needs a value"; read -r -a cli_args <<<"$2"; shift 2 ;;   # CLI options
    --) shift; sb+=("$@"); break ;;
    *) usage "unknown option '$1'; see the header of $0" ;;
  esac
done
[ $allow = 0 ] || cli_args+=(--allow-fallback)   # the checks and the jobs (a profile may refuse stand-ins) alike
if [ -n "$shards" ] && ! [[ "$shards" =~ ^[1-9][0-9]*$ ]]; then
  usage "--shards: '$shards' is not allowed; allowed: a positive integer"
fi
words() {  # words NAME "a,b,,c": the non-empty comma-separated items into the array NAME
  local -n _words=$1; local _all _w; _words=()
  IFS=, read -r -a _all <<<"$2"; for _w in "${_all[@]}"; do [ -z "$_w" ] || _words+=("$_w"); done
}
words vlist "$variants"; words slist "$suites"
[ ${#vlist[@]} -gt 0 ] && [ ${#slist[@]} -gt 0 ] || usage "--variants and --suites need at least one value each"
py=${GC_VENV:-$repo/.venv}/bin/python
[ -x "$py" ] || py=python3
pypath="$repo/src:$repo${PYTHONPATH:+:$PYTHONPATH}"   # the package and plug-in modules, found as in the jobs
# The registered methods and suites, plug-ins from GCOMPRESS_METHODS / GCOMPRESS_SUITES included: what the jobs'
# CLI accepts as --variant and --suite, and each job's pytest markers.
registry=$(cd "$repo" && PYTHONPATH=$pypath "$py" -c 'import sys
from gcompress_bench import UsageError, methods, suites
try:
    jobs = suites.jobs()
    print(" ".join(methods.load()), "|", " ".join(j + "=" + ",".join(m) for j, m in jobs.items()), "|",
          " ".join(j for j, m in jobs.items() if any(suites.SUITES[x].device_facts for x in m)))
except UsageError as e:
    sys.exit(str(e))' 2>&1) \
  || usage "--variants: cannot list the registered methods and suites (GCOMPRESS_METHODS='${GCOMPRESS_METHODS:-}', GCOMPRESS_SUITES='${GCOMPRESS_SUITES:-}'): ${registry##*$'\n'}"
registry=${registry##*$'\n'}   # the last line: methods | job=markers ... | timing jobs
IFS='|' read -r reg_methods reg_jobs reg_timing <<<"$registry"
read -r -a jobs <<<"$reg_jobs"
read -r -a registry <<<"$reg_methods"
declare -A timing_job=(); for j in $reg_timing; do timing_job[$j]=1; done
declare -A job_markers=(); suites_allowed=""
for j in "${jobs[@]}"; do job_markers[${j%%=*}]=${j#*=}; suites_allowed+="${suites_allowed:+, }${j%%=*}"; done
declare -A known=() seen=(); allowed=""
for m in "${registry[@]}"; do known[$m]=1; allowed+="${allowed:+, }$m"; done
for v in "${vlist[@]}"; do
  [ -n "${known[$v]:-}" ] || usage "--variants: unknown variant '$v'; allowed: $allowed"
  [ -z "${seen[v:$v]:-}" ] || usage "--variants: '$v' is given twice; allowed: each variant once"
  seen[v:$v]=1
done
for s in "${slist[@]}"; do
  [ -n "${job_markers[$s]:-}" ] || usage "--suites: unknown suite '$s'; allowed: $suites_allowed"
  [ -z "${seen[s:$s]:-}" ] || usage "--suites: '$s' is given twice; allowed: each suite once"
  seen[s:$s]=1
done
if [ $dry = 0 ] && ! command -v sbatch >/dev/null; then
  usage "sbatch is not on PATH: run this on a Slurm login node or use --dry-run (tests/local_slurm.sh starts a throwaway one for the tests)"
fi
# Every option the jobs get (model, profile, tasks, job args) is checked here as the jobs will check it,
# offline and before anything is submitted: a bad value costs seconds, not a night. One --check-only session per
# method of the night (each checks all that baseline does, and its own options); baseline's alone when it is the
# only variant.
markers=""; for s in "${slist[@]}"; do markers+="${markers:+,}${job_markers[$s]}"; done; markers=${markers//,/ or }
checked=()
for v in "${vlist[@]}"; do [ "$v" = baseline ] || checked+=("$v"); done
[ ${#checked[@]} -gt 0 ] || checked=(baseline)
hf=(); [ -z "${GC_HF_HOME:-}" ] || hf=(HF_HOME="$GC_HF_HOME")   # the jobs' HF cache (run_llm.sbatch sets it so)
warnings=""   # printed once every check has passed: a refusal stays one line
for v in "${checked[@]}"; do
  out=$(cd "$repo" && env "${hf[@]}" PYTHONPATH="$pypath" "$py" -m pytest benchmarks -q -m "$markers" --variant "$v" \
        --exp-group "$group" "${job_args[@]}" "${cli_args[@]}" --check-only 2>&1)
  case $? in
    0) ;;
    1) fell=$(grep '^gcompress-bench check: .*FALLBACK' <<<"$out")
       [ $allow = 1 ] || usage "the $v jobs would fall back to stand-in data ($(head -n 1 <<<"$fell" | sed 's/^gcompress-bench check: //')$( [ "$(wc -l <<<"$fell")" -gt 1 ] && echo " and $(( $(wc -l <<<"$fell") - 1 )) more")); fill the jobs' HF cache on a machine with network (tools/fill_hf_cache.py), or pass --allow-fallback"
       warnings+="launch_llm_night: WARNING: the $v jobs would fall back:"$'\n'"$fell"$'\n' ;;
    *) usage "the $v jobs would stop at once: $(grep -m 1 '^gcompress-bench: ' <<<"$out" || tail -n 1 <<<"$out")" ;;
  esac
done
if [ -n "$shards" ] && [ -n "${seen[s:infer_sweep]:-}" ]; then   # every shard must get a cell
  cells=$(cd "$repo" && PYTHONPATH="$pypath" "$py" -m pytest benchmarks -q --co -m "${job_markers[infer_sweep]//,/ or }" \
          "${job_args[@]}" "${cli_args[@]}" 2>/dev/null | grep -c '::')
  [ "$shards" -le "$cells" ] || usage "--shards: $shards is more than the $cells infer_sweep cells; allowed: 1 to $cells"
fi
printf '%s' "$warnings" >&2
[ $gpu = 1 ] || sb+=(--gres=none)
logs="$repo/slurm_logs"; [ $dry = 1 ] || mkdir -p "$logs" "$root" "$reports"
stamp=$(date +%Y%m%d-%H%M%S)
submit() {  # prints the job id; in a dry run prints the command and a placeholder id
  if [ $dry = 1 ]; then echo "sbatch $*" >&2; echo "DRYRUN"; else sbatch --parsable "$@" | cut -d';' -f1; fi
}
ids=() names=()
for v in "${vlist[@]}"; do
  for s in "${slist[@]}"; do
    exp="$v-$s"; array=() sharded=() out="$logs/${exp}_%j"
    if [ -n "$shards" ] && [ "$s" = infer_sweep ]; then
      array=(--array "0-$((shards - 1))"); sharded=(--shards "$shards"); out="$logs/${exp}_%A_%a"
    fi
    node=(); [ -z "${timing_job[$s]:-}" ] || node=("${pin[@]}")
    id=$(submit --job-name "$exp" --output "$out.out" --error "$out.err" "${array[@]}" "${sb[@]}" "${node[@]}" \
      --export "ALL,GC_REPO=$repo" "$repo/slurm/run_llm.sbatch" --variant "$v" --suite "$s" \
      --results-root "$root" --exp-group "$group" --run-id "$stamp-$exp" "${sharded[@]}" "${job_args[@]}" \
      -- "${cli_args[@]}")
    [ -n "$id" ] || usage "sbatch refused the $exp job"
    ids+=("$id"); names+=("$exp=$id")
    echo "submitted $exp: job $id (logs $logs/${exp}_<job>.out/.err)"
  done
done
report=$(submit --job-name "report-$group" --output "$logs/report-${group}_%j.out" --error "$logs/report-${group}_%j.err" \
  --dependency "afterany:$(IFS=:; echo "${ids[*]}")" "${sb[@]}" \
  --export "ALL,GC_REPO=$repo" "$repo/slurm/night_report.sh" "$root" "$group" "$reports/$group" "${names[@]}")
echo "submitted report: job $report (after ${ids[*]})"
echo "results: $root/$group/   report: $reports/$group/report.md   logs: $logs/"
