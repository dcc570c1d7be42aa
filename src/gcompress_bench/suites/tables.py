"""How suites render their cells: in a run summary (one table helper and the columns timing cells share), and in
a comparison of columns (one reference, candidates), where each row holds every side's values or why they
are missing."""
from gcompress_bench.fmt import NOT_AVAILABLE, fmt_mib

HOST_BOUND = 0.8   # a cell whose device is busy for less of its time than this is host-bound
STAT_COLS = ["p50", "p90", "p99", "std", "cv"]
MEM_COLS = ["peak alloc MiB", "peak reserved MiB"]


def save_plot(fig, run_dir, name):
    """A figure as plots/NAME of a run dir; returns NAME."""
    from gcompress_bench.results import plots
    (run_dir / "plots").mkdir(exist_ok=True)
    return plots.save(fig, run_dir / "plots" / name)


def latency_plot(suite, summary, run_dir, plot, name):
    """A timing suite's latency plot of one run, when it has an ok cell."""
    if not any(c["suite"] == suite and c["status"] == "ok" for c in summary["cells"].values()):
        return []
    from gcompress_bench.results import plots
    return [save_plot(getattr(plots, plot)({summary["variant"]: summary["cells"]}, summary["model"]), run_dir, name)]


def table(title, columns, rows, render):
    """A markdown table of cells; `render` gets every cell, ok or not (an OOM cell still has memory)."""
    if not rows:
        return []
    out = ["", f"## {title}", "", "| cell | status | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for cid, c in rows:
        status = "ok" if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"
        out.append(f"| {cid} | {status} | " + " | ".join(render(c)) + " |")
    return out


def rows(s, suite):
    return [(c, v) for c, v in s["cells"].items() if v.get("suite") == suite]


def latency_cols(c, metric, extra):
    mem = c.get("memory", {})
    tail = [fmt_mib(mem.get("peak_allocated_bytes")), fmt_mib(mem.get("peak_reserved_bytes"))]
    if c["status"] != "ok":
        return ["—"] * (5 + len(extra)) + tail
    st = c["stats_ms"][metric]
    return [f"{st[k]:.3f}" for k in ("p50", "p90", "p99", "std", "cv")] + [f(c) for f in extra] + tail


def roof(c, rate, pct):
    r = c.get("roofline")
    if not r:
        return "n/a"
    return f"{r[rate]:.4g}" + (f" ({r[pct]:.0f}%)" if r[pct] is not None else "")


def dash_unless_ok(n, render):
    return lambda c: render(c) if c["status"] == "ok" else ["—"] * n


def on_gpu(s):
    """Whether a run's device timed itself (CUDA): only then do rooflines, floors and busy shares mean something."""
    return s.get("timer") == "cuda_event"


def busy(c):
    """A cell's device-busy share, marked host-bound below HOST_BOUND."""
    if c.get("device_busy") is None:
        return "n/a"
    return f"{100 * c['device_busy']:.0f}%" + (" **host-bound**" if c["host_bound"] else "")


def joules(c, key):
    """An energy field as a table shows it; `not available` where the run had no counter (the reason is in the
    run's energy line), n/a for runs from before energy was recorded."""
    e = c.get("energy")
    if not e:
        return "n/a"
    return f"{e[key]:.4g}" if isinstance(e.get(key), (int, float)) else NOT_AVAILABLE


def breakdown_table(rows):
    """Decode steps against their floors (weights and live KV read once at the copy ceiling)."""
    rows = [(cid, c) for cid, c in rows if c.get("roofline_breakdown")]
    if not rows:
        return []
    out = ["", "## decode roofline (ms per step, p50)", "",
           "Floors: every weight and the live KV read once at the copy ceiling. Parts of the gap: host gaps (the "
           "step minus the device's own time), then the kernels' time above the floors, by family when profiled.",
           "", "| cell | weights floor | KV floor | measured | floors' share | gap | parts of the gap | largest |",
           "|---|---|---|---|---|---|---|---|"]
    for cid, c in rows:
        b = c["roofline_breakdown"]
        parts = "; ".join(f"{k} {v:.3f}" for k, v in b["parts_ms"].items()) or "not profiled"
        out.append(f"| {cid} | {b['weights_floor_ms']:.3f} | {b['kv_floor_ms']:.3f} | {b['measured_ms']:.3f} | "
                   f"{100 * b['floor_share']:.0f}% | {b['gap_ms']:.3f} | {parts} | {b['largest'] or '—'} |")
    return out


def data_source(c):
    return c["source"] + (f", {c['split']} split" if c.get("split") else "")


def missing(side, cid):
    """Why a comparison column has no value for a cell, or None when it has one."""
    c = side["cells"].get(cid)
    if c is None:
        return side.get("not_run", {}).get(cid, "not in these runs")
    return None if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"


def suite_ids(sides, suite):
    """A suite's cells over every column, ordered by their parameters."""
    params = {cid: c["params"] for s in sides for cid, c in s["cells"].items() if c.get("suite") == suite}
    return sorted(params, key=lambda cid: tuple(str(v).zfill(8) for v in params[cid].values()))


def value(values, key, fmt):
    return values["missing"] if "missing" in values else ("n/a" if values.get(key) is None else fmt(values[key]))


def p50(v, fmt):
    """A p50 as a table shows it, marked where the host, not the device, set the cell's time."""
    return value(v, "p50", fmt) + (" **host-bound**" if v.get("host_bound") else "")


def compare_table(title, head, rows):
    """A comparison's markdown table: its header row, then one row per list of strings."""
    return ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def quality_rows(suite, ref, cands, pairs, keys):
    """Per cell: each side's `keys` (or why it is missing) and each candidate's paired test."""
    rows = []
    for cid in suite_ids([ref, *cands], suite):
        row = {"cell": cid, "paired": {label: t.get(cid) for label, t in pairs.items()}, "values": {}}
        for side in (ref, *cands):
            why = missing(side, cid)
            row["values"][side["label"]] = {"missing": why} if why else {k: side["cells"][cid][k] for k in keys
                                                                            if k in side["cells"][cid]}
        rows.append(row)
    return rows
