"""How a method's logical dims become physical dims: one policy for every method.

    none       the dims the method chose, as they are
    round:N    each dim to the nearest multiple of N (at least N, at most the module's full dim): PaLU's
               rule for its ranks, for any method; the parameter count moves with the rounding
    pad:N      the dim kept, its weights padded with zeros to a multiple of N: the outputs are unchanged
               and only the shapes (and bytes) change
    budget:T   under the parameter budget of the unaligned dims, each module gets one dim from those the
               dimension-sweep table T (a `-m dims` run) measured fast (summed over its M), within 25%
               of the method's own dim; a multiple-choice knapsack picks them to keep the most
               importance (the method's own sensitivity: singular-value energy, channel scores). Its
               solution and the latency the table predicts are recorded.

A method describes each module it shapes as a `Module` (its logical dim, full dim, parameters per unit
of dim, gains) and gets back, per module, the dim whose weights are real (`kept`) and the dim in memory
(`physical`).
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

from gcompress_bench import UsageError, dimtable
from gcompress_bench.dimtable import ALIGNMENTS

MAX_UNIT = 1024           # round:N and pad:N: the widest unit that can matter (GEMM tiles are at most 256 wide)
ALLOWED = f"none, round:N, pad:N (1 <= N <= {MAX_UNIT}) or budget:TABLE (a dims run dir or its dims_table.json)"
FAST_TOLERANCE = 0.10     # a dim is fast when no larger dim of the same curve is more than 10% faster (a cliff)
REACH = 16                # how far above a dim a faster one makes it slow
WINDOW = 0.25             # budget candidates lie within 25% of the method's own dim
DP_STATES = 20000          # knapsack resolution: costs are rounded up, so the budget always holds


@dataclass(frozen=True)
class Policy:
    kind: str               # none | round | pad | budget
    n: int = None
    table: dict = None
    text: str = "none"


@dataclass(frozen=True)
class Module:
    name: str
    logical: int            # the dim the method chose
    full: int               # the largest dim allowed
    unit_params: int        # parameters per unit of dim
    gains: object           # gains[d] = importance kept at dim d, d = 0..full, non-decreasing
    shape: dict = None      # the sweep series that times this module: {"op", "sweep", fixed dims...}


@functools.cache
def parse(text):
    """A policy from its text, worked out once per process (a budget table is read once); a bad one is one
    UsageError line naming it."""
    kind, _, arg = str(text).partition(":")
    if kind == "none" and not arg:
        return Policy("none")
    if kind in ("round", "pad"):
        if not (arg.isascii() and arg.isdigit()) or not 1 <= int(arg) <= MAX_UNIT:
            raise UsageError(f"--align-policy: {text!r} is not allowed; N must be an integer from 1 to {MAX_UNIT} "
                             f"(no kernel tile is wider); allowed: {ALLOWED}")
        return Policy(kind, int(arg), text=text)
    if kind == "budget" and arg:
        return Policy("budget", table={**dimtable.load_table(arg), "path": arg}, text=text)
    raise UsageError(f"--align-policy: unknown value {text!r}; allowed: {ALLOWED}")


def apply(policy, modules):
    """{name: {"logical", "kept", "physical", "policy", "expected"}} for every module."""
    if policy.kind == "budget":
        kept = solve_budget(policy.table, modules)
    else:
        kept = {m.name: rounded(m.logical, policy.n, m.full) if policy.kind == "round" else m.logical for m in modules}
    out = {}
    for m in modules:
        phys = -(-kept[m.name] // policy.n) * policy.n if policy.kind == "pad" else kept[m.name]
        out[m.name] = {"logical": m.logical, "kept": kept[m.name], "physical": phys, "policy": policy.text,
                       "expected": expected(policy.table, m, phys) if policy.table else None}
    return out


def rounded(d, n, full):
    """The nearest multiple of n (at least n); where that passes the full dim, the largest multiple under it."""
    r = max(n, round(d / n) * n)
    return r if r <= full else (full // n) * n or full


def facts(policy, modules, dims):
    """What a run records of its alignment: parameters against the unaligned budget, aligned shares, and
    the table's predicted latency of the logical and physical dims where it covers a module."""
    budget = sum(m.logical * m.unit_params for m in modules)
    kept = sum(dims[m.name]["kept"] * m.unit_params for m in modules)
    phys = sum(dims[m.name]["physical"] * m.unit_params for m in modules)
    physical = [d["physical"] for d in dims.values()]
    out = {"policy": policy.text, "modules": len(modules), "params_budget": budget, "params_kept": kept,
           "params_physical": phys, "within_budget": kept <= budget,
           "aligned_share": dimtable.aligned_share(physical)}
    if policy.table:
        out["table"] = {k: policy.table.get(k) for k in ("device_name", "dtype", "model", "run_id", "path")}
        out["predicted_ms"] = _predicted(dims)
    return out


def markdown(f):
    """The alignment's lines in a method's section of a run summary."""
    if not f:
        return []
    share = ", ".join(f"{a}: {v:.0%}" for a, v in f["aligned_share"].items() if v is not None)
    lines = [f"- alignment policy {f['policy']} over {f['modules']} modules: parameters with weights "
             f"{f['params_kept']:,} against the unaligned {f['params_budget']:,} "
             f"({'within' if f['within_budget'] else 'OVER'} that budget), in memory {f['params_physical']:,}; "
             f"dims in memory aligned to {share}"]
    if f.get("table"):
        pred = "; ".join(f"{at}: {p['logical_ms']:.4f} -> {p['physical_ms']:.4f} ms over {p['modules']} modules"
                         for at, p in f["predicted_ms"].items()) or "no module of this shape in the table"
        lines.append(f"- sweep table {f['table']['path']} ({f['table']['device_name']}, {f['table']['dtype']}) "
                     f"predicts, unaligned -> aligned: {pred}")
    return lines


def _predicted(dims):
    """Sum over the modules the table covers of its p50 at each M, logical dims against physical dims."""
    total = {}
    for d in dims.values():
        for at, e in (d["expected"] or {}).items():
            if e["logical_ms"] is None or e["physical_ms"] is None:
                continue
            t = total.setdefault(at, {"modules": 0, "logical_ms": 0.0, "physical_ms": 0.0})
            t["modules"] += 1
            t["logical_ms"] += e["logical_ms"]
            t["physical_ms"] += e["physical_ms"]
    return total


# ---------------------------------------------------------------- the sweep table

def _series(table, shape):
    """The table's series that time a module of this shape (every fixed dim it names must match)."""
    if not shape:
        return []
    fixed = {k: v for k, v in shape.items() if k not in ("op", "sweep")}
    return [s for s in table["series"] if s["op"] == shape["op"] and s["sweep"] == shape["sweep"]
            and all(s["shape"].get(k) == v for k, v in fixed.items())]


def _at(series):
    return ", ".join(f"{k}={v}" for k, v in sorted(series.items()) if k in ("M", "seq", "batch"))


def _p50(series, value):
    return next((p["p50_ms"] for p in series["points"] if p["value"] == value), None)


def combined(series):
    """One curve from the series of one shape at several M (or seq): each value's p50 summed over them,
    so a dim is judged by its time over the table's whole range of M, where the large M (prefill) weigh
    most. At M = 1 a GEMV may even prefer an odd dim; at M = 16384 it costs several times over."""
    total = {}
    for s in series:
        for p in s["points"]:
            total.setdefault(p["value"], []).append(p["p50_ms"])
    return {"points": [{"value": v, "p50_ms": sum(ms)} for v, ms in sorted(total.items()) if len(ms) == len(series)]}


def fast_values(series):
    """Values of one curve whose p50 is within FAST_TOLERANCE of the fastest value at or above them, up to
    REACH above: a dim is slow when a slightly larger one runs faster. The reach keeps one lucky
    sample far up the range from disqualifying everything below it."""
    pts = sorted(series["points"], key=lambda p: p["value"])
    return {p["value"] for i, p in enumerate(pts)
            if p["p50_ms"] <= (1 + FAST_TOLERANCE) * min(q["p50_ms"] for q in pts[i:]
                                                         if q["value"] <= p["value"] + REACH)}


def _shapes(table, op=None):
    """The table's curves, one per operator and fixed shape, summed over M."""
    groups = {}
    for s in table["series"]:
        if op is None or s["op"] == op:
            groups.setdefault(repr((s["op"], s["sweep"], sorted(s["shape"].items()))), []).append(s)
    return [combined(g) for g in groups.values()]


def inferred_alignment(table, op=None):
    """The smallest alignment whose every multiple the table covers is fast on each curve (of `op`, or
    any), or None: what a module outside the table's range falls back to."""
    curves = _shapes(table, op) or _shapes(table)
    for a in ALIGNMENTS:
        if all(all(v in fast_values(c) for v in (p["value"] for p in c["points"]) if v % a == 0) for c in curves):
            return a
    return None


def candidates(table, m):
    """(aligned dims to choose from, where they came from), within WINDOW of the logical dim either way, so
    the method's own allocation stays the starting point. Always holds an aligned dim at or below the
    logical one (or the smallest dim there is), so the unaligned budget always has a solution."""
    series = _series(table, m.shape)
    covered = [v for v in (p["value"] for p in series[0]["points"]) if v <= m.full] if series else []
    if covered and min(covered) <= m.logical <= max(covered):
        fast = fast_values(combined(series))
        pool, source = sorted(v for v in covered if v in fast), "table"
    else:
        a = inferred_alignment(table, (m.shape or {}).get("op")) or ALIGNMENTS[-1]
        pool, source = list(range(a, m.full + 1, a)), f"multiples of {a} (alignment inferred from the table)"
    reach = max(1, round(m.logical * WINDOW))
    near = [v for v in pool if abs(v - m.logical) <= reach]
    if not any(v <= m.logical for v in near):
        near = [max([v for v in pool if v <= m.logical], default=min(m.logical, pool[0] if pool else m.logical))] + near
    return near, source


def expected(table, m, physical):
    """{"M=...": {"logical_ms", "physical_ms"}} from the series that time this module."""
    return {_at(s): {"logical_ms": _p50(s, m.logical), "physical_ms": _p50(s, physical),
                     "kernels_logical": _kernels(s, m.logical), "kernels_physical": _kernels(s, physical)}
            for s in _series(table, m.shape)} or None


def _kernels(series, value):
    return next((p.get("kernels") for p in series["points"] if p["value"] == value), None)


def solve_budget(table, modules):
    """{name: dim}: the multiple-choice knapsack over each module's fast candidates."""
    budget = sum(m.logical * m.unit_params for m in modules)
    choices = [candidates(table, m)[0] for m in modules]
    items = [[(d * m.unit_params, float(m.gains[d])) for d in ds] for m, ds in zip(modules, choices)]
    pick = knapsack(items, budget)
    return {m.name: ds[j] for m, ds, j in zip(modules, choices, pick)}


def knapsack(items, budget, states=DP_STATES):
    """Multiple-choice knapsack: items[i] = [(cost, value), ...]; one choice per item, total cost <= budget,
    total value maximal. Exact when the budget over the costs' common divisor fits in `states`; beyond
    that costs are rounded up to a coarser unit with one unit of slack per item, and a solution over
    the budget is repaired by stepping items down to cheaper choices at the least value lost per cost
    saved: the result never exceeds the budget. Returns the chosen index per item; raises ValueError when
    not even the cheapest choices fit."""
    if sum(min(c for c, _ in opts) for opts in items) > budget:
        raise ValueError(f"no choice of dims fits the budget of {budget} parameters")
    unit = math.gcd(*(int(c) for opts in items for c, _ in opts))
    slack = 0
    if budget // unit > states:
        unit, slack = math.ceil(budget / states), len(items)
    cap = int(budget // unit) + slack
    dp = np.full(cap + 1, -np.inf)
    dp[0] = 0.0
    picks = []
    for opts in items:
        new, pick = np.full(cap + 1, -np.inf), np.full(cap + 1, -1, dtype=np.int32)
        for j, (cost, value) in enumerate(opts):
            c = math.ceil(cost / unit)
            if c > cap:
                continue
            cand = np.full(cap + 1, -np.inf)
            cand[c:] = dp[:cap + 1 - c] + value
            better = cand > new
            new[better], pick[better] = cand[better], j
        dp = new
        picks.append(pick)
    at, out = int(np.argmax(dp)), []
    for opts, pick in zip(reversed(items), reversed(picks)):
        j = int(pick[at])
        out.append(j)
        at -= math.ceil(opts[j][0] / unit)
    return _repair(items, out[::-1], budget)


def _repair(items, pick, budget):
    pick = list(pick)
    while sum(items[i][j][0] for i, j in enumerate(pick)) > budget:
        steps = [((items[i][j][1] - items[i][k][1]) / (items[i][j][0] - items[i][k][0]), i, k)
                 for i, j in enumerate(pick) for k in range(len(items[i])) if items[i][k][0] < items[i][j][0]]
        _, i, k = min(steps)
        pick[i] = k
    return pick
