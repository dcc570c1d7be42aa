"""The way in: `gcompress-bench run|eval|check|report|compare`, and the seed's `python -m gcompress_bench.llm_run`
and `llm_eval`. A run is one pytest invocation underneath (one execution path, not two). Nothing heavy is
imported before the arguments are read: --help and bad input cost a fraction of a second."""
import argparse
import sys
from pathlib import Path

from gcompress_bench import REPO_ROOT, UsageError
from gcompress_bench.config import option_dest, options
from gcompress_bench.suites import marker_expr


class Parser(argparse.ArgumentParser):
    """Options spelled out in full (a prefix of one option must not pass for it), and a bad one is one line
    that names it and the closest option, not the whole usage."""

    def __init__(self, **kw):
        super().__init__(allow_abbrev=False, **kw)

    def error(self, message):
        unknown = message.removeprefix("unrecognized arguments: ")
        if unknown != message:
            import difflib
            first = unknown.split()[0]
            flags = [f for a in self._actions for f in a.option_strings]
            close = difflib.get_close_matches(first.split("=")[0], flags, n=1, cutoff=0.5)
            message = f"{first}: unknown option" + (f"; closest: {close[0]}" if close else "") + " (see --help)"
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def parser(prog, suites, default_suite):
    p = Parser(prog=prog, description=f"Run the {'/'.join(suites)} suite(s) through pytest. "
               "Arguments after `--` go to pytest unchanged.")
    p.add_argument("--suite", default=default_suite, help=f"one of: {', '.join(suites)}")
    p.add_argument("--out", help="results root (same as --results-root)")
    for flag, _, kind, help_text in options():
        p.add_argument(flag, dest=option_dest(flag), help=help_text,
                       **({"action": "store_true", "default": None} if kind == "flag" else {}))
    return p


def pytest_args(args, extra):
    """Forward every given option; option checking stays in the pytest plugin, in one place."""
    # quiet: one progress line per cell is the suite's own (-v after `--` brings pytest's back)
    out = [str(REPO_ROOT / "benchmarks"), "-c", str(REPO_ROOT / "pytest.ini"), "--rootdir", str(REPO_ROOT),
           "-q", "--no-header", "-m", marker_expr(args.suite)]
    given = vars(args)
    if args.out and not given.get("results_root"):
        given["results_root"] = args.out
    out += [flag if kind == "flag" else f"{flag}={given[option_dest(flag)]}"
            for flag, _, kind, _ in options() if given.get(option_dest(flag)) is not None]
    return out + extra


def run(prog, suites, default_suite, argv=None, extra_options=()):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    try:
        p = parser(prog, suites, default_suite)
    except UsageError as e:   # a plug-in that cannot be imported
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    for flag, kw in extra_options:
        p.add_argument(flag, **kw)
    args = p.parse_args(argv)
    if args.suite not in suites:
        print(f"{prog}: --suite: unknown suite {args.suite!r}; allowed: {', '.join(suites)}", file=sys.stderr)
        return 2
    import pytest  # here: --help and bad input never import pytest or torch
    return int(pytest.main(pytest_args(args, extra)))


COMPARE_HELP = 'A reference (the baseline) against any number of candidates: reports/<exp_group>/report.md, report.json and PNGs from run dirs.'


def compare(argv, prog="gcompress-bench compare"):
    """The baseline against candidates: report.md, report.json and PNGs from run dirs."""
    ap = Parser(prog=prog, description=COMPARE_HELP)
    ap.add_argument("--reference", nargs="+", default=[], help="the baseline's run dirs")
    ap.add_argument("--candidate", nargs="+", action="append", default=[], metavar="LABEL=RUN",
                    help="a labelled column: LABEL=RUN [RUN ...]; repeat for more columns")
    ap.add_argument("--exp-group")
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--out")
    ap.add_argument("--cell", help="cell whose raw samples get the distribution plot (default: a decode cell)")
    ap.add_argument("--jobs", help="a markdown table of the Slurm jobs behind the runs, put first in report.md")
    args = ap.parse_args(argv)
    from gcompress_bench.results.comparison import parse_candidates, runs_of_group, write
    from gcompress_bench.results.store import ResultsError
    out = Path(args.out or Path("reports") / (args.exp_group or "comparison"))
    try:
        jobs = Path(args.jobs).read_text() if args.jobs else ""
    except OSError as e:
        print(f"{prog}: --jobs: {args.jobs!r} can't be read ({e.strerror}); allowed: a markdown file", file=sys.stderr)
        return 2
    try:
        ref, cands, skipped = args.reference, parse_candidates(args.candidate), []
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
            print(f"{prog}: {msg}", file=sys.stderr)
            return 2
        rep = write(ref, cands, out, args.cell, jobs, skipped)
    except ResultsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    for w in rep["warnings"]:
        print(f"WARNING: {w}")
    print(f"{out / 'report.md'}")
    return 0


def report(paths, prog="gcompress-bench report", command=None):
    """Regenerate summary.json, run_summary.md and plots/ of run dirs from their raw.json."""
    from gcompress_bench.results.report import summarize
    from gcompress_bench.results.store import ResultsError
    usage = f"usage: {command or prog} RUN_DIR [RUN_DIR ...]"
    if paths[:1] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{COMMANDS['report']}")
        return 0
    if not paths:
        print(usage, file=sys.stderr)
        return 2
    for path in paths:
        try:
            summarize(path)
        except ResultsError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        print(f"{path}/run_summary.md")
    return 0


COMMANDS = {
    "run": "run a job (--suite): infer_sweep (prefill and decode timing) by default, or any registered job",
    "eval": "measure quality: the ppl, lmeval or longctx job (--suite)",
    "check": "check offline that every input of a run is found, name each, and stop (loads and writes nothing)",
    "report": "regenerate summary.json, run_summary.md and plots/ of run dirs from their raw.json",
    "compare": "the baseline against candidates: report.md, report.json and plots",
}


def main(argv=None):
    """The `gcompress-bench` console script."""
    from gcompress_bench import suites
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: gcompress-bench {" + ",".join(COMMANDS) + "} [options]   (gcompress-bench COMMAND --help)"
    if not argv or argv[0] in ("-h", "--help"):
        print("\n".join([usage, "", *(f"  {c:<8} {h}" for c, h in COMMANDS.items())]), file=sys.stdout if argv else
              sys.stderr)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        jobs = suites.jobs()
    except UsageError as e:   # a plug-in that cannot be imported
        print(f"gcompress-bench: {e}", file=sys.stderr)
        return 2
    quality = [j for j, markers in jobs.items() if all(suites.SUITES[m].needs_weights for m in markers)]
    if cmd == "run":
        return run(f"gcompress-bench {cmd}", list(jobs), "infer_sweep", rest)
    if cmd == "eval":
        return run(f"gcompress-bench {cmd}", quality, "ppl", rest)
    if cmd == "check":
        own, extra = (rest[:rest.index("--")], rest[rest.index("--"):]) if "--" in rest else (rest, [])
        return run(f"gcompress-bench {cmd}", list(jobs), "infer_sweep", [*own, "--check-only", *extra])
    if cmd == "report":
        return report(rest)
    if cmd == "compare":
        return compare(rest)
    print(f"gcompress-bench: unknown command {cmd!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
