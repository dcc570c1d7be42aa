"""The seed's CLIs: thin wrappers that build one pytest invocation (one execution path, not two)."""
import argparse
import sys

from gcompress_bench import REPO_ROOT
from gcompress_bench.config import option_dest, options
from gcompress_bench.suites import marker_expr


def parser(prog, suites, default_suite):
    p = argparse.ArgumentParser(prog=prog, description=f"Run the {'/'.join(suites)} suite(s) through pytest. "
                                "Arguments after `--` go to pytest unchanged.")
    p.add_argument("--suite", default=default_suite, help=f"one of: {', '.join(suites)}")
    p.add_argument("--out", help="results root (same as --results-root)")
    for flag, _, kind, help_text in options():
        p.add_argument(flag, dest=option_dest(flag), help=help_text,
                       **({"action": "store_true", "default": None} if kind == "flag" else {}))
    return p


def pytest_args(args, extra):
    """Forward every given option; option checking stays in the pytest plugin, in one place."""
    out = [str(REPO_ROOT / "benchmarks"), "-c", str(REPO_ROOT / "pytest.ini"), "--rootdir", str(REPO_ROOT),
           "-m", marker_expr(args.suite)]
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
    p = parser(prog, suites, default_suite)
    for flag, kw in extra_options:
        p.add_argument(flag, **kw)
    args = p.parse_args(argv)
    if args.suite not in suites:
        print(f"{prog}: --suite: unknown suite {args.suite!r}; allowed: {', '.join(suites)}", file=sys.stderr)
        return 2
    import pytest  # here: --help and bad input never import pytest, torch or a plug-in's code
    return int(pytest.main(pytest_args(args, extra)))
