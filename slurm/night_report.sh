#!/usr/bin/env bash
# The night's last job: the comparison report (every variant against the baseline) plus the state of every
# job it waited for.
#   night_report.sh RESULTS_ROOT EXP_GROUP OUT_DIR name=jobid ...
set -uo pipefail
root=$1 group=$2 out=$3; shift 3
repo=${GC_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
python=${GC_VENV:-$repo/.venv}/bin/python
command -v conda >/dev/null 2>&1 && conda env list 2>/dev/null | awk '{print $1}' | grep -qx "${GC_CONDA_ENV:-gc}" \
  && eval "$(conda shell.bash hook)" && conda activate "${GC_CONDA_ENV:-gc}" && python=python
# plug-in methods (GCOMPRESS_METHODS, inherited from the launcher) are modules of the checkout, like the package
export PYTHONPATH="$repo/src:$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
jobs_md="$out/jobs.md"
{
  echo "## Jobs"; echo
  echo "| job | id | state | exit code | logs |"; echo "|---|---|---|---|---|"
  for pair in "$@"; do
    name=${pair%%=*} id=${pair#*=}
    scontrol show job -o "$id" 2>/dev/null | tr ' ' '\n' | grep -E '^(JobId|JobState|ExitCode|ArrayTaskId)=' \
      | paste -sd' ' | while read -r line; do
        state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$line"); code=$(sed -n 's/.*ExitCode=\([0-9:]*\).*/\1/p' <<<"$line")
        jid=$(sed -n 's/.*JobId=\([0-9]*\).*/\1/p' <<<"$line"); task=$(sed -n 's/.*ArrayTaskId=\([0-9]*\).*/\1/p' <<<"$line")
        flag=$([ "$state" = COMPLETED ] && echo "$state" || echo "**FAILED** ($state)")
        echo "| $name | $jid${task:+_$task} | $flag | $code | slurm_logs/${name}_$id${task:+_$task}.err |"
      done
  done
} > "$jobs_md"
cat "$jobs_md"
cd "$repo" && "$python" tools/plot_llm_results.py --exp-group "$group" --results-root "$root" --out "$out" --jobs "$jobs_md"
