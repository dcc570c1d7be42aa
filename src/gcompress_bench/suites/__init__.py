"""Suites as plug-ins: the registry (the interface is in base.py).

A suite is named in one place, its registration: `register(...)` at the end of its module. The built-in
modules are listed below; more come from the comma-separated module names in GCOMPRESS_SUITES and from
the `gcompress_bench.suites` entry point group of installed packages. Their order is the order of
options, jobs and run-summary tables.
"""
import importlib

from gcompress_bench.registry import Registry
from gcompress_bench.suites.base import QUALITY_COST, Cell, Suite  # noqa: F401 (the plug-in API)

SUITES = Registry("suite", "marker", ("gcompress_bench.suites.infer_sweep", "gcompress_bench.suites.ppl",
                                      "gcompress_bench.suites.lmeval", "gcompress_bench.suites.longctx",
                                      "gcompress_bench.suites.dims"), "GCOMPRESS_SUITES", "gcompress_bench.suites")
register, load = SUITES.register, SUITES.load


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


for _module in SUITES.builtin:   # the built-ins are light: every reader of SUITES finds them registered
    importlib.import_module(_module)
