"""Baseline vs palu: reports/<exp_group>/report.md, report.json and PNGs from run dirs.

    python tools/plot_llm_results.py --baseline RUN [RUN ...] --palu RUN [RUN ...] [--out reports/G]
    python tools/plot_llm_results.py --exp-group G [--results-root results]
"""
import argparse
import sys
from pathlib import Path

from gcompress_bench.comparison import write
from gcompress_bench.report import build_summary
from gcompress_bench.results import ResultsError


def runs_of_group(root, group):
    """Every readable run dir of a group, split by the variant it records, and the unreadable ones with why:
    one corrupt run dir must not take the night's report down with it."""
    sides, bad = {"baseline": [], "palu": []}, []
    for run in sorted(p for p in Path(root, group).iterdir() if p.is_dir()) if Path(root, group).is_dir() else []:
        try:
            sides.setdefault(build_summary(run)["variant"], []).append(run)
        except ResultsError as e:
            bad.append(f"skipped run dir {run}: {e}")
    return sides["baseline"], sides["palu"], bad


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
        base, palu, skipped = args.baseline, args.palu, []
        if args.exp_group:
            base, palu, skipped = runs_of_group(args.results_root, args.exp_group)
        for line in skipped:
            print(f"WARNING: {line}", file=sys.stderr)
        if not base or not palu:
            msg = ("need at least one baseline and one palu run (--baseline/--palu, or --exp-group with both under "
                   f"{args.results_root}/{args.exp_group})")
            if jobs:   # a night whose jobs failed still gets a report that says so
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.md").write_text(f"# baseline vs palu\n\n{jobs}\nNo comparison: {msg}\n")
            print(f"plot_llm_results: {msg}", file=sys.stderr)
            return 2
        rep = write(base, palu, out, args.cell, jobs, skipped)
    except ResultsError as e:
        print(f"plot_llm_results: {e}", file=sys.stderr)
        return 2
    for w in rep["warnings"]:
        print(f"WARNING: {w}")
    print(f"{out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
