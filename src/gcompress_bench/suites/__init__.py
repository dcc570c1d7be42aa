"""Suites as plug-ins: the registry (the interface is in base.py).

A suite is named in one place, its registration: `register(...)` at the end of its module. The built-in
modules are listed in BUILTIN; more come from the comma-separated module names in GCOMPRESS_SUITES and
from the `gcompress_bench.suites` entry point group of installed packages. Their order is the order of
options, jobs and run-summary tables.
"""
import importlib
import os
from importlib.metadata import entry_points

from gcompress_bench.suites.base import QUALITY_COST, Cell, Suite  # noqa: F401 (the plug-in API)

BUILTIN = ("gcompress_bench.suites.infer_sweep", "gcompress_bench.suites.ppl", "gcompress_bench.suites.lmeval",
           "gcompress_bench.suites.longctx", "gcompress_bench.suites.dims")
SUITES = {}


def register(suite):
    if suite.marker in SUITES and type(SUITES[suite.marker]) is not type(suite):
        raise ValueError(f"two suites marked {suite.marker!r}: {type(SUITES[suite.marker])} and {type(suite)}")
    SUITES[suite.marker] = suite
    return suite


def load():
    """Import every suite module (idempotent); returns the registry, in the order of BUILTIN and then the
    plug-ins, whatever order the modules were first imported in."""
    modules = BUILTIN + tuple(m for m in os.environ.get("GCOMPRESS_SUITES", "").split(",") if m)
    for module in modules:
        importlib.import_module(module)
    for ep in entry_points(group="gcompress_bench.suites"):
        ep.load()
    rank = {m: i for i, m in enumerate(modules)}
    ordered = sorted(SUITES.values(), key=lambda s: rank.get(type(s).__module__, len(rank)))
    SUITES.clear()
    SUITES.update((s.marker, s) for s in ordered)
    return SUITES


def timed():
    return tuple(m for m, s in load().items() if s.timed)


def quality():
    """The suites whose numbers need pretrained weights."""
    return tuple(m for m, s in load().items() if s.needs_weights)


def jobs():
    """{job: its markers}, e.g. infer_sweep: (prefill, decode)."""
    out = {}
    for s in load().values():
        out.setdefault(s.job, []).append(s.marker)
    return {job: tuple(markers) for job, markers in out.items()}


def marker_expr(job):
    """The pytest -m expression that selects one job's cells."""
    return " or ".join(jobs()[job])


def option_rows():
    return [row for s in load().values() for row in s.options]


def defaults():
    """{section: defaults} of every suite that declares its own (plug-ins), under the YAML."""
    return {s.marker: dict(s.defaults) for s in load().values() if s.defaults}


load()   # the suites are light: every reader of SUITES finds them registered
