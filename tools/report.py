"""Regenerate summary.json, run_summary.md and plots/ of run dirs from their raw.json.

    python tools/report.py results/<exp_group>/<run_id> [...]
"""
import sys

from gcompress_bench.results.report import summarize
from gcompress_bench.results.store import ResultsError


def main(paths):
    if not paths:
        print("usage: python tools/report.py RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            summarize(path)
        except ResultsError as e:
            print(f"report: {e}", file=sys.stderr)
            return 2
        print(f"{path}/run_summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
