"""The suite table: one record per kind of cell, the one place that says what its cells are, what they
cost, which metric heads its progress line and what its summary adds. Options, collection, sharding,
progress lines and summaries all read it, so a new kind of cell is one new record."""
from dataclasses import dataclass, field
from typing import Callable

from . import dims, longctx


@dataclass(frozen=True)
class Cell:
    """One cell as it travels from the grid to raw.json: pytest parametrizes with it and the record
    is built from it, so nothing downstream re-derives parameters from a test id."""
    suite: str
    id: str
    params: dict
    cost: int


@dataclass(frozen=True)
class Suite:
    marker: str                  # the pytest marker, and the config section of its grid
    job: str                     # what a run names (infer_sweep, ppl, lmeval): one CLI --suite
    grid: tuple                  # config keys whose values span the grid (lists of positive integers)
    ids: Callable                # config section -> [(test id, params)], in the YAML's order
    cost: Callable               # params -> expected cost, for balancing shards
    headline: str = None         # samples_ms metric of progress lines (timed suites)
    derive: Callable = field(default=lambda rec, stats: {})   # summary fields computed from a record
    timed: bool = False          # its cells carry warm-up / iteration / trial counts
    validate: Callable = None    # checks a grid the `grid` keys cannot describe (config section -> raises UsageError)
    opt_in: bool = False         # runs only when -m names its marker: a long sweep no default run should start

    def cells(self, section):
        return [Cell(self.marker, cid, params, self.cost(params)) for cid, params in self.ids(section)]


def _decode_ids(g):
    # eager cells keep their plain ids, so runs from before the decode modes still compare
    return [(f"B{b}-ctx{c}-gen{n}" + ("" if m == "eager" else f"-{m}"), {"batch": b, "ctx": c, "gen": n, "mode": m})
            for m in g["mode"] for b in g["batch"] for c in g["ctx"] for n in g["gen"]]


def _decode_cost(p):
    """A decode step is launch-bound: it weighs like a fixed-size forward per token."""
    launch = 256 if p.get("mode", "eager") == "eager" else 64
    return p["gen"] * (launch + p["batch"] * p["ctx"] // 8)


def _decode_derive(rec, stats):
    step = stats["step"]["p50"]
    return {"ms_per_token": step, "tokens_per_s": rec["params"]["batch"] / (step / 1e3),
            "ttft_ms": stats["ttft"]["p50"]}


QUALITY_COST = 10 ** 6   # a quality cell outweighs any timing cell: shards get them first, spread out

SUITES = {s.marker: s for s in (
    Suite("prefill", "infer_sweep", ("batch", "seq_len"),
          lambda g: [(f"B{b}-S{s}", {"batch": b, "seq_len": s}) for b in g["batch"] for s in g["seq_len"]],
          lambda p: p["batch"] * p["seq_len"], headline="latency", timed=True,
          derive=lambda rec, stats: {"tokens_per_s": rec["tokens"] / (stats["latency"]["p50"] / 1e3)}),
    Suite("decode", "infer_sweep", ("ctx", "gen", "batch"), _decode_ids, _decode_cost, headline="step",
          timed=True, derive=_decode_derive),
    Suite("ppl", "ppl", (),
          lambda g: [(f"S{g['seq_len']}" + (f"-stride{g['stride']}" if g["stride"] else ""), dict(g))],
          lambda p: QUALITY_COST),
    Suite("lmeval", "lmeval", (),
          lambda g: [(f"{t}-{k}shot", {"task": t, "fewshot": k}) for t in g["tasks"] for k in g["fewshot"]],
          lambda p: QUALITY_COST),
    Suite("dims", "dims", (), dims.cell_ids, dims.cost, headline="latency", derive=dims.derive, timed=True,
          validate=dims.check_grid, opt_in=True),
    Suite("longctx", "longctx", (),
          lambda g: [(f"{t}-L{n}", {"task": t, "length": n}) for t in g["tasks"] for n in g["lengths"]],
          lambda p: QUALITY_COST, validate=longctx.check_grid, opt_in=True),
)}
TIMED = tuple(m for m, s in SUITES.items() if s.timed)
QUALITY = tuple(m for m, s in SUITES.items() if not s.timed)   # they need pretrained weights


def jobs():
    """{job: its markers}, e.g. infer_sweep: (prefill, decode)."""
    out = {}
    for s in SUITES.values():
        out.setdefault(s.job, []).append(s.marker)
    return {job: tuple(markers) for job, markers in out.items()}


def marker_expr(job):
    """The pytest -m expression that selects one job's cells."""
    return " or ".join(jobs()[job])
