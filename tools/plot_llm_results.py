"""A reference (the baseline) against any number of candidates: reports/<exp_group>/report.md,
report.json and PNGs from run dirs.

    python tools/plot_llm_results.py --reference RUN [RUN ...] --candidate palu=RUN [RUN ...] \\
        [--candidate "palu latent=RUN ..."] [--out reports/G]
    python tools/plot_llm_results.py --exp-group G [--results-root results]

A column may hold several run dirs of one setting (its infer_sweep, ppl and lmeval runs, or the shards
of one). With --exp-group, the baseline runs are the reference and the other runs are grouped into
candidates by method and method options, each labelled by them (e.g. `palu cache=latent`).
"""
import argparse
import sys
from pathlib import Path

from gcompress_bench import methods
from gcompress_bench.results.comparison import write
from gcompress_bench.results.report import build_summary
from gcompress_bench.results.store import ResultsError, read_json


def runs_of_group(root, group):
    """(reference dirs, {label: dirs}, skipped): every readable run dir of a group, grouped by method and
    method options; the unreadable ones with why: one corrupt run dir must not take the report down."""
    columns, bad = {}, []
    for run in sorted(p for p in Path(root, group).iterdir() if p.is_dir()) if Path(root, group).is_dir() else []:
        try:
            build_summary(run)
            cfg = read_json(run / "config.json")
        except ResultsError as e:
            bad.append(f"skipped run dir {run}: {e}")
            continue
        columns.setdefault(methods.label(cfg), []).append(run)
    return columns.pop("baseline", []), columns, bad


def _candidates(specs):
    """--candidate LABEL=RUN [RUN ...], repeated -> {label: [run dirs]}."""
    out = {}
    for first, *more in specs:
        label, sep, run = first.rpartition("=")   # labels may hold "=" themselves (asvd rounding=32)
        if not sep or not label or not run:
            raise ResultsError(f"--candidate: {first!r} is not LABEL=RUN; e.g. --candidate palu=results/G/palu-infer")
        out.setdefault(label, []).extend([run, *more])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="plot_llm_results", description=__doc__.splitlines()[0])
    ap.add_argument("--reference", nargs="+", default=[], help="the baseline's run dirs")
    ap.add_argument("--candidate", nargs="+", action="append", default=[], metavar="LABEL=RUN",
                    help="a labelled column: LABEL=RUN [RUN ...]; repeat for more columns")
    ap.add_argument("--exp-group")
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--out")
    ap.add_argument("--cell", help="cell whose raw samples get the distribution plot (default: a decode cell)")
    ap.add_argument("--jobs", help="a markdown table of the Slurm jobs behind the runs, put first in report.md")
    args = ap.parse_args(argv)
    out = Path(args.out or Path("reports") / (args.exp_group or "comparison"))
    jobs = Path(args.jobs).read_text() if args.jobs else ""
    try:
        ref, cands, skipped = args.reference, _candidates(args.candidate), []
        if args.exp_group:
            ref, cands, skipped = runs_of_group(args.results_root, args.exp_group)
        for line in skipped:
            print(f"WARNING: {line}", file=sys.stderr)
        if not ref or not cands:
            msg = ("need baseline runs and at least one candidate (--reference/--candidate, or --exp-group with both "
                   f"under {args.results_root}/{args.exp_group})")
            if jobs:   # a night whose jobs failed still gets a report that says so
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.md").write_text(f"# comparison\n\n{jobs}\nNo comparison: {msg}\n")
            print(f"plot_llm_results: {msg}", file=sys.stderr)
            return 2
        rep = write(ref, cands, out, args.cell, jobs, skipped)
    except ResultsError as e:
        print(f"plot_llm_results: {e}", file=sys.stderr)
        return 2
    for w in rep["warnings"]:
        print(f"WARNING: {w}")
    print(f"{out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
