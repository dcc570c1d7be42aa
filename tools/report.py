"""Regenerate summary.json, run_summary.md and plots/ of run dirs from their raw.json (as `gcompress-bench report`).

    python tools/report.py results/<exp_group>/<run_id> [...]
"""
import sys

from gcompress_bench.cli import report

if __name__ == "__main__":
    sys.exit(report(sys.argv[1:], prog="report", command="python tools/report.py"))
