#!/usr/bin/env bash
# The night's last job: the comparison report (every variant against the baseline) plus the state of every
# job it waited for (src/gcompress_bench/results/jobs.py).
#   night_report.sh RESULTS_ROOT EXP_GROUP OUT_DIR name=jobid ...
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac   # the header above
root=$1 group=$2 out=$3; shift 3
repo=${GC_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
python=${GC_VENV:-$repo/.venv}/bin/python
command -v conda >/dev/null 2>&1 && conda env list 2>/dev/null | awk '{print $1}' | grep -qx "${GC_CONDA_ENV:-gc}" \
  && eval "$(conda shell.bash hook)" && conda activate "${GC_CONDA_ENV:-gc}" && python=python
# plug-in methods (GCOMPRESS_METHODS, inherited from the launcher) are modules of the checkout, like the package
export PYTHONPATH="$repo/src:$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
jobs_md="$out/jobs.md"
# from what each job wrote itself (job-<id>.json beside its run dir), else sacct, else scontrol: Slurm forgets a
# finished job after MinJobAge, and this job may start long after the first one ended
"$python" -m gcompress_bench.results.jobs "$root/$group" "$@" > "$jobs_md"
cat "$jobs_md"
cd "$repo" && "$python" tools/plot_llm_results.py --exp-group "$group" --results-root "$root" --out "$out" --jobs "$jobs_md"
