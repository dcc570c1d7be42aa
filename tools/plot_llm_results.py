"""Baseline vs palu: reports/<exp_group>/report.md, report.json and PNGs from run dirs.

    python tools/plot_llm_results.py --baseline RUN [RUN ...] --palu RUN [RUN ...] [--out reports/G]
    python tools/plot_llm_results.py --exp-group G [--results-root results]
"""
import argparse
import sys
from pathlib import Path

from gcompress_bench.comparison import write
from gcompress_bench.results import ResultsError, read_json


def runs_of_group(root, group):
    """Every run dir of a group with a raw.json, split by the variant it records."""
    sides = {"baseline": [], "palu": []}
    for raw in sorted(Path(root, group).glob("*/raw.json")):
        sides.setdefault(read_json(raw).get("variant"), []).append(raw.parent)
    return sides["baseline"], sides["palu"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="plot_llm_results", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", nargs="+", default=[])
    ap.add_argument("--palu", nargs="+", default=[])
    ap.add_argument("--exp-group")
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--out")
    ap.add_argument("--cell", help="cell whose raw samples get the distribution plot (default: a decode cell)")
    ap.add_argument("--jobs", help="a markdown table of the Slurm jobs behind the runs, put first in report.md")
    args = ap.parse_args(argv)
    out = Path(args.out or Path("reports") / (args.exp_group or "comparison"))
    jobs = Path(args.jobs).read_text() if args.jobs else ""
    try:
        base, palu = args.baseline, args.palu
        if args.exp_group:
            base, palu = runs_of_group(args.results_root, args.exp_group)
        if not base or not palu:
            msg = ("need at least one baseline and one palu run (--baseline/--palu, or --exp-group with both under "
                   f"{args.results_root}/{args.exp_group})")
            if jobs:   # a night whose jobs failed still gets a report that says so
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.md").write_text(f"# baseline vs palu\n\n{jobs}\nNo comparison: {msg}\n")
            print(f"plot_llm_results: {msg}", file=sys.stderr)
            return 2
        rep = write(base, palu, out, args.cell, jobs)
    except ResultsError as e:
        print(f"plot_llm_results: {e}", file=sys.stderr)
        return 2
    for w in rep["warnings"]:
        print(f"WARNING: {w}")
    print(f"{out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
