"""One reference (the baseline runs) against any number of labelled candidates (compressed runs):
speedups, memory, quality with paired tests per candidate, each method's facts, and an environment
check, so a comparison across machines or settings is refused or flagged, never hidden."""
import json
from pathlib import Path

from gcompress_bench import methods
from gcompress_bench.fmt import fmt_mib
from gcompress_bench.measure import ops
from gcompress_bench.results import paired as paired_test
from gcompress_bench.results import plots, report
from gcompress_bench.results.report import build_summary
from gcompress_bench.results.store import ResultsError, load_raw, read_json, write_json
from gcompress_bench.suites import SUITES, tables
from gcompress_bench.suites.tables import compare_table, missing, value

ENV_KEYS = ("gpu", "gpu_count", "driver", "cuda", "torch", "transformers", "lm_eval", "host", "cpu")
RUN_KEYS = ("model", "weights", "dtype", "timer", "device")
# The settings that change any number; each suite adds its own (Suite.settings). Runs merged into one column
# must agree on them.
RUN_SETTINGS = ("model", "dtype", "profile")
LAYOUT_TEXT = {"hf": "the modules as Transformers and the method built them",
               "fused": "engine-like: stacked Q/K/V and gate/up GEMMs, decode attention per KV head"}


def settings(cfg):
    """{setting: value} of one run's config.json: the suites' settings and the method's own options."""
    jobs = cfg.get("suites", [])
    keys = RUN_SETTINGS + tuple(dict.fromkeys(k for s in SUITES.values() if s.job in jobs for k in s.settings))
    out = {}
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[key] = value
    name = cfg.get("variant")
    out.update({f"{name}.{k}": v for k, v in (cfg.get(name) or {}).items()})
    return out


def _check_agree(label, runs):
    """One column's runs must agree on every setting they share; else one line naming settings and runs."""
    differ = []
    for key in sorted({k for r in runs for k in r["settings"]}):
        vals = {json.dumps(r["settings"][key]): r for r in runs if key in r["settings"]}
        if len(vals) > 1:
            differ.append(f"{key} (" + ", ".join(f"{v} in {Path(r['dir']).name}" for v, r in vals.items()) + ")")
    if differ:
        raise ResultsError(f"the {label} runs differ in {'; '.join(differ)}: one column would mix settings; "
                           "allowed: runs of one setting per column (give each setting its own --candidate)")


def load_side(label, run_dirs):
    """Merge one column's run dirs (its infer_sweep, ppl and lmeval jobs, or the shards of one)."""
    side = {"label": label, "runs": [], "cells": {}, "raw": {}, "envs": [], "variant": None, "facts": None,
            "not_run": {}, "repeats": {}, "shown": {}, "warnings": [], "fallbacks": {}}
    for d in map(Path, run_dirs):
        s = report.build_summary(d)
        raw = load_raw(d)["cells"]
        for cid, cell in s["cells"].items():
            side["repeats"].setdefault(cid, []).append({"run_id": d.name, "status": cell["status"],
                                                        "value": _repeat_value(cell)})
            if side["cells"].get(cid, {}).get("status") == "ok" and cell["status"] != "ok":
                continue   # a finished copy of a cell (e.g. from a re-run shard) wins over a failed one
            side["cells"][cid], side["raw"][cid], side["shown"][cid] = cell, raw[cid], d.name
        side["warnings"] += run_warnings(label, s)
        for text in _fallbacks([s["cells"], s["method_facts"]]):
            side["fallbacks"].setdefault(text, []).append(s["run_id"])
        stop = s.get("interrupted")
        side["not_run"].update({cid: f"not run: {_interrupted(s['run_id'], stop)}" if stop else "not run"
                                for cid in s["not_run"]})
        side["runs"].append({"dir": str(d), "run_id": s["run_id"], "variant": s["variant"], "timing": _timing(s),
                             "interrupted": stop, "not_run": s["not_run"],
                             "span": [read_json(d / "env.json").get("time_utc"), s.get("updated_utc")],
                             "harness": s.get("harness"),
                             "settings": settings(read_json(d / "config.json")), **{k: s[k] for k in RUN_KEYS}})
        side["envs"].append(read_json(d / "env.json"))
        side["variant"] = side["variant"] or s["variant"]
        side["facts"] = side["facts"] or s["method_facts"]
    variants = {r["variant"] for r in side["runs"]}
    if len(variants) > 1:
        raise ResultsError(f"the {label} runs are of different methods ({', '.join(sorted(variants))}); allowed: "
                           "one method per column")
    _check_agree(label, side["runs"])
    side["repeats"] = {cid: runs for cid, runs in side["repeats"].items() if len(runs) > 1}
    side["warnings"] += [f"{label} ran on stand-in data ({', '.join(dict.fromkeys(runs))}): {text}"
                         for text, runs in side["fallbacks"].items()]
    return side


def _timing(s):
    """Whether a run timed a suite: by its cells, or by its job's suites (interrupted before its first cell)."""
    markers = {c.get("suite") for c in s["cells"].values()}
    return any(suite.device_facts and (m in markers or suite.job in (s["suites"] or [])) for m, suite in SUITES.items())


def _interrupted(run_id, stop):
    return f"{run_id} was INTERRUPTED after {stop['cells_done']} of {stop['cells']} cells"


def _spread(seen):
    """(largest - smallest) / smallest of a repeated cell's values, or None."""
    vals = [r["value"] for r in seen if r["value"] is not None]
    return (max(vals) - min(vals)) / min(vals) if len(vals) > 1 and min(vals) > 0 else None


def _repeat_lines(side):
    """A cell measured by several runs of one column: every run's value, which one the tables show (the last
    finished), and the spread between them."""
    out = []
    for cid, seen in side["repeats"].items():
        spread = f"; spread {100 * _spread(seen):.1f}% between runs" if _spread(seen) is not None else ""
        runs = ", ".join(f"{r['run_id']}: " + (f"{r['value']:.4g}" if r["value"] is not None else r["status"]) +
                         (" (shown)" if r["run_id"] == side["shown"][cid] else "") for r in seen)
        out.append(f"{side['label']}: {cid} was measured in {len(seen)} runs ({runs}){spread}")
    return out


def _repeat_value(cell):
    """What a repeated cell is compared by across runs: a timed cell's headline p50, else its suite's first
    compared field (ppl, acc, accuracy)."""
    suite = SUITES.get(cell.get("suite"))
    if cell["status"] != "ok" or suite is None:
        return None
    if "stats_ms" in cell:
        return cell["stats_ms"][suite.headline]["p50"]
    return next((cell[k] for k in suite.compare_keys if isinstance(cell.get(k), (int, float))), None)


def _fallbacks(obj):
    """Every text in a summary's cells or facts that says it ran on stand-in data."""
    if isinstance(obj, dict):
        return [t for k, v in obj.items() if k not in report.RAW_ONLY for t in _fallbacks(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _fallbacks(v)]
    return [obj] if isinstance(obj, str) and "FALLBACK" in obj else []


def run_warnings(label, s):
    """What one run's summary warns of, for the comparison's warnings: the host, synthetic weights, a
    compression off its request, a stopped run, refused writes (stand-in data: per column, in load_side)."""
    run = f"{label} run {s['run_id']}"
    host = s.get("host") or {}
    out = [f"{run}: {w}" for w in host.get("warnings", [])]
    if host.get("host_bound_cells"):   # judged on GPU only (report.host_check)
        out.append(f"{run}: host-bound cells (device busy < {100 * tables.HOST_BOUND:.0f}%; the host, not the device, "
                   f"set their time): {', '.join(host['host_bound_cells'])}")
    if s["weights"] == "synthetic weights":
        out.append(f"{run}: synthetic weights: its times are real, and no quality number comes from it")
    m = methods.load().get(s["variant"])
    if m and s["method_facts"] and (m.headline(s["method_facts"]) or "").startswith("WARNING"):
        out.append(f"{run}: {m.headline(s['method_facts']).removeprefix('WARNING: ')}")
    if s["stopped"]:
        out.append(f"{run} STOPPED: {s['stopped']}")
    return out + [f"{run}: the raw log refused a write (not strict JSON): {r}" for r in s.get("refused", [])]


def _time_went_rows(ref, cands):
    """Per cell profiled (--ops-profile) in the reference and a candidate: each operator family's time per
    iteration on every side, each candidate's delta, and the family that lost (or won back) the most."""
    rows = []
    for suite in (m for m, timed in SUITES.items() if timed.device_facts):
        for cid in tables.suite_ids([ref, *cands], suite):
            prof = {s["label"]: s["cells"][cid]["ops_profile"] for s in (ref, *cands)
                    if missing(s, cid) is None and s["cells"][cid].get("ops_profile")}
            if ref["label"] not in prof or len(prof) < 2:
                continue
            base = prof[ref["label"]]["families_ms"]
            delta = {label: {f: p["families_ms"][f] - base[f] for f in ops.FAMILY_NAMES}
                     for label, p in prof.items() if label != ref["label"]}
            classified = {label: p.get("classification", "unversioned") for label, p in prof.items()}
            rows.append({"cell": cid, "suite": suite, "profiles": prof, "delta_ms": delta,
                         "classification": classified if len(set(classified.values())) > 1 else next(iter(classified.values())),
                         "delta_pct": {label: {f: d[f] / base[f] * 100 if base[f] else None for f in d}
                                       for label, d in delta.items()},
                         "lost_most": {label: max(d, key=d.get) for label, d in delta.items()},
                         "won_most": {label: min(d, key=d.get) for label, d in delta.items()}})
    return rows


def environment_check(sides):
    """Differences between any two runs in what decides a number: each one a warning line."""
    warnings = []
    runs = [(r, e) for side in sides for r, e in zip(side["runs"], side["envs"])]
    for key in ENV_KEYS:
        vals = {str(e.get(key)) for _, e in runs}
        if len(vals) > 1:
            warnings.append(f"runs differ in {key}: {sorted(vals)}; a comparison across machines or software")
    for key in ("timer", "device", "weights"):
        vals = {str(r[key]) for r, _ in runs}
        if len(vals) > 1:
            warnings.append(f"runs differ in {key}: {sorted(vals)}; not like with like")
    suite_keys = set(RUN_SETTINGS) | {k for s in SUITES.values() for k in s.settings}   # a method's options may differ
    for key in sorted(suite_keys & {k for r, _ in runs for k in r["settings"]}):
        vals = {json.dumps(r["settings"][key]) for r, _ in runs if key in r["settings"]}
        if len(vals) > 1:
            warnings.append(f"the columns differ in {key}: {sorted(vals)}; not like with like")
    return warnings


def run_checks(sides):
    """What happened to the runs: interrupted ones and their missing cells, timing runs on several nodes or
    overlapping in time on one host."""
    warnings = []
    runs = [(r, e) for side in sides for r, e in zip(side["runs"], side["envs"])]
    for side in sides:
        for r in side["runs"]:
            if r["interrupted"]:
                warnings.append(f"{side['label']} run {_interrupted(r['run_id'], r['interrupted'])} "
                                f"({r['interrupted']['signal']}); missing: {', '.join(r['not_run']) or 'none'}")
    nodes = {e.get("host") for r, e in runs if r["timing"]}
    if len(nodes) > 1:
        warnings.append("the timing runs ran on different nodes (" + ", ".join(
            f"{r['run_id']} on {e.get('host')}" for r, e in runs if r["timing"]) + "): each speedup compares two "
            "machines; pin a night's timing jobs to one node (the launcher's --timing-node) or node type (--constraint)")
    timed = [(r, e) for r, e in runs if r["timing"] and all(r["span"])]
    for i, (r1, e1) in enumerate(timed):
        for r2, e2 in timed[i + 1:]:
            if e1.get("host") == e2.get("host") and r1["span"][0] <= r2["span"][1] and r2["span"][0] <= r1["span"][1]:
                warnings.append(f"timing runs {Path(r1['dir']).name} and {Path(r2['dir']).name} overlapped in time "
                                f"on host {e1.get('host')}: they shared its CPUs, so launch-bound cells are inflated")
    return warnings


def build(reference_dirs, candidates):
    """reference_dirs: the baseline's run dirs; candidates: {label: run dirs}."""
    ref = load_side("baseline", reference_dirs)
    if ref["variant"] != "baseline":
        raise ResultsError(f"the reference runs are {ref['variant']} runs; allowed: baseline runs")
    cands = [load_side(label, dirs) for label, dirs in candidates.items()]
    sides = [ref, *cands]
    for key in ("model", "dtype"):   # a speedup or a ratio between two models is not a result
        vals = {r["settings"][key] for side in sides for r in side["runs"]}
        if len(vals) > 1:
            raise ResultsError(f"the runs measure different {key}s ({', '.join(sorted(map(str, vals)))}); "
                               f"allowed: every column of one {key}")
    layouts = {_layout(r) for side in sides for r in side["runs"] if r["timing"]}
    if len(layouts) > 1:
        raise ResultsError(f"the timing runs use different module layouts ({', '.join(sorted(layouts))}): the layout "
                           "changes the answer; allowed: every timing column of one --layout")
    pairs = {s["label"]: paired_test.compare_cells(ref["raw"], s["raw"]) for s in cands}
    differ = environment_check(sides)
    warnings = differ + run_checks(sides) + [w for side in sides for w in side["warnings"] + _repeat_lines(side)]
    rows = {m: suite.compare_rows(ref, cands, pairs) for m, suite in SUITES.items()
            if tables.suite_ids(sides, m)}
    return {
        "reference": {"label": ref["label"], "runs": ref["runs"]},
        "candidates": [{"label": s["label"], "variant": s["variant"], "runs": s["runs"], "facts": s["facts"]}
                       for s in cands],
        "environment": ref["envs"][0], "environment_same": not differ, "warnings": warnings,
        "layout": next(iter(layouts), None),
        "timing_node": _one_node(sides),
        "repeat_spread": {side["label"]: {cid: _spread(seen) for cid, seen in side["repeats"].items()
                                          if _spread(seen) is not None} for side in sides},
        "suites": [m for m in rows if rows[m]],
        **{m: r for m, r in rows.items() if r},
        "time_went": _time_went_rows(ref, cands),
        "cost": [c for c in map(_cost, sides) if c],
    }, sides


def _one_node(sides):
    """The node every timing run ran on, or None (no timing run, or several nodes: a warning says which)."""
    nodes = {e.get("host") for side in sides for r, e in zip(side["runs"], side["envs"]) if r["timing"]}
    return next(iter(nodes)) if len(nodes) == 1 else None


def _layout(run):
    """A timing run's module layout; runs from before the option had HF's modules."""
    return run["settings"].get("layout") or "hf"


def _timed_rows(rep):
    """Every timed suite's rows: what the memory and energy tables and the memory figure span."""
    return [r for m in rep["suites"] if SUITES[m].device_facts for r in rep[m]]


def _cost(side):
    """What one column's timing runs cost together, e.g. the pieces a suite was split into: their
    measured regions over their sessions' wall time, and the device minutes (one device per run)."""
    runs = [r["harness"] for r in side["runs"] if r.get("harness")]
    if not runs:
        return None
    parts = {}
    for h in runs:
        for k, v in h["parts_s"].items():
            parts[k] = parts.get(k, 0.0) + v
    wall = sum(h["wall_s"] for h in runs)
    stops = [_interrupted(r["run_id"], r["interrupted"]) for r in side["runs"] if r.get("harness") and r["interrupted"]]
    return {"label": side["label"], "runs": len(runs), "wall_s": wall, "efficiency": parts["measured"] / wall,
            "device_minutes": wall / 60, "parts_s": parts, "status": "; ".join(stops) or "complete"}


def _ratio(row, label, ref, key):
    a, b = row["values"][ref].get(key), row["values"][label].get(key)
    return f"{b / a:.3f}" if a and b is not None else "—"


def markdown(rep):
    ref = rep["reference"]["label"]
    labels = [c["label"] for c in rep["candidates"]]
    runs = lambda side: ", ".join(Path(r["dir"]).name for r in side["runs"])  # noqa: E731
    lines = [f"# {ref} vs {', '.join(labels)}", "", f"Runs: {ref}: {runs(rep['reference'])}; " +
             "; ".join(f"{c['label']}: {runs(c)}" for c in rep["candidates"]), ""]
    layout = f", {rep['layout']} layout" if rep.get("layout") else ""
    lines += [f"## Headline: each candidate against {ref} ({rep['reference']['runs'][0]['model']}{layout}; "
              "95% intervals; a ratio whose interval holds 1.0, or a difference whose interval holds 0, is no "
              "measurable difference; a speedup's interval holds the noise within its runs, not between runs: "
              "repeat a run to see that)"]
    for c in rep["candidates"]:
        lines += ["", f"### {c['label']}", "", *headline(rep, c)]
    lines += ["", "## Warnings", ""]
    lines += [f"- WARNING: {w}" for w in rep.get("skipped", [])]
    lines += [f"- WARNING: {w}" for w in rep["warnings"]] or ["- none"]
    if rep["environment_same"]:
        lines.append("- environment: every run on the same GPU, driver, torch, transformers, model, dtype and timer")
    env = rep["environment"]
    lines.append(f"- GPU {env.get('gpu') or 'none'} (driver {env.get('driver')}), torch {env.get('torch')}, "
                 f"transformers {env.get('transformers')}, host {env.get('host')}")
    if rep.get("layout"):
        lines.append(f"- module layout of every timing run: **{rep['layout']}** ({LAYOUT_TEXT[rep['layout']]})")
    if rep.get("timing_node"):
        lines.append(f"- every timing run on one node: {rep['timing_node']}")
    timed = [m for m in rep["suites"] if SUITES[m].device_facts]
    for m in timed:
        lines += SUITES[m].compare_markdown(rep[m], ref, labels)
    mem_rows = _timed_rows(rep)
    if any((v.get("energy") or {}).get("available") for r in mem_rows for v in r["values"].values()):
        lines += _energy_table(mem_rows, ref, labels)
    if mem_rows:
        mib = lambda v, k: value(v, k, fmt_mib)  # noqa: E731
        lines += compare_table("memory (MiB: peak allocated, reserved, KV cache; ratios to the reference)",
                               ["cell", f"{ref} alloc", "reserved", "KV"] +
                               [h for label in labels for h in (f"{label} alloc", "reserved", "KV", "alloc ratio",
                                                                "KV ratio")],
                               [[r["cell"]] + [mib(r["values"][ref], k) for k in ("peak_allocated_bytes",
                                                                                   "peak_reserved_bytes",
                                                                                   "kv_cache_bytes")] +
                                [x for label in labels for x in (
                                    *(mib(r["values"][label], k) for k in ("peak_allocated_bytes", "peak_reserved_bytes",
                                                                            "kv_cache_bytes")),
                                    _ratio(r, label, ref, "peak_allocated_bytes"), _ratio(r, label, ref, "kv_cache_bytes"))]
                                for r in mem_rows])
    for m in rep["suites"]:
        if m not in timed:
            lines += SUITES[m].compare_markdown(rep[m], ref, labels)
    if rep.get("cost"):
        kinds = [k for k in rep["cost"][0]["parts_s"] if k != "measured"]
        lines += compare_table("what the timing runs cost (harness efficiency = measured regions / session wall; one "
                        "device per run)", ["column", "status", "runs", "measured s", "wall s", "efficiency",
                                            "device min"] + [f"{k} s" for k in kinds],
                        [[c["label"], c["status"], str(c["runs"]), f"{c['parts_s']['measured']:.1f}", f"{c['wall_s']:.1f}",
                          f"{100 * c['efficiency']:.0f}%", f"{c['device_minutes']:.1f}"] +
                         [f"{c['parts_s'].get(k, 0.0):.1f}" for k in kinds] for c in rep["cost"]])
        total = sum(c["device_minutes"] for c in rep["cost"])
        lines += ["", f"All columns: {total:.1f} device minutes."]
    lines += _time_went_markdown(rep.get("time_went", []), ref, labels)
    for c in rep["candidates"]:
        if c["facts"]:
            m = methods.load().get(c["variant"], methods.Method())
            lines += ["", f"# {c['label']}", *m.markdown(c["facts"])]
    return "\n".join(lines) + "\n"


def headline(rep, cand):
    """One candidate's block: what it is, speed per timed suite, memory, quality per suite, energy."""
    ref, label = rep["reference"]["label"], cand["label"]
    m = methods.load().get(cand["variant"])
    lines = [f"- compression: {m.headline(cand['facts'])}"] if m and cand["facts"] and m.headline(cand["facts"]) else []
    timed = [x for x in rep["suites"] if SUITES[x].device_facts]
    for x in timed:
        lines += SUITES[x].headline_items(rep[x], label)
    cells = {r["cell"] for x in timed for r in rep[x]}
    moved = {side: [v for cid, v in rep["repeat_spread"].get(side, {}).items() if cid in cells] for side in (ref, label)}
    lines += [f"- **between runs**: {side}'s repeated timing cells moved {100 * min(v):.1f}% to {100 * max(v):.1f}% "
              "from one run to the next; the intervals above hold the noise within a run only" for side, v in
              moved.items() if v]
    rows = _timed_rows(rep)
    if rows:
        def ratios(key, get=lambda v, k: v.get(k)):
            got = [(b / a, r["cell"]) for r in rows for a, b in [(get(r["values"][ref], key), get(r["values"][label],
                                                                                                  key))]
                   if isinstance(a, (int, float)) and a > 0 and isinstance(b, (int, float))]
            if not got:
                return None
            (lo, lo_cell), (hi, hi_cell) = min(got), max(got)
            return f"{lo:.3f}x ({lo_cell})" + ("" if lo == hi else f" to {hi:.3f}x ({hi_cell})")
        peak, kv = ratios("peak_allocated_bytes"), ratios("kv_cache_bytes")
        lines.append(f"- memory, one measurement per cell: peak allocated {peak or 'not measured (no CUDA device)'}; "
                     f"KV cache {kv or 'not measured'}")
        energy = rep["environment"].get("energy") or {}
        joules = ratios("energy", lambda v, k: (v.get(k) or {}).get("joules_per_token"))
        lines.append(f"- energy per decode token, one measurement per cell: {joules}" if joules else
                     f"- energy per token: not available ({energy.get('reason', 'no decode cell measured it')})")
    for x in rep["suites"]:
        if x not in timed:
            lines += SUITES[x].headline_items(rep[x], label)
    return lines


def _energy_table(rows, ref, labels):
    """Joules per decode token (per forward in prefill) and mean power per side; ratio = candidate / reference."""
    def j(v, key):
        return v["missing"] if "missing" in v else tables.joules(v, key)

    def key(r):
        return SUITES[r["suite"]].joules

    def ratio(r, label):
        a, b = ((r["values"][x].get("energy") or {}).get(key(r)) for x in (ref, label))
        return f"{b / a:.3f}" if isinstance(a, float) and isinstance(b, float) and a > 0 else "—"
    return compare_table("energy (decode: J per generated token; prefill: J per forward; mean W; ratio = candidate / "
                  "reference)", ["cell", f"{ref} J", "W"] + [h for label in labels for h in (f"{label} J", "W", "ratio")],
                  [[r["cell"], j(r["values"][ref], key(r)), j(r["values"][ref], "mean_power_w")] +
                   [x for label in labels for x in (j(r["values"][label], key(r)), j(r["values"][label], "mean_power_w"),
                                                    ratio(r, label))] for r in rows])


def _time_went_markdown(rows, ref, labels):
    lines = []
    for r in rows:
        have = [label for label in labels if label in r["profiles"]]
        fams = list(ops.FAMILY_NAMES)
        p = r["profiles"]
        unit = p[ref]["unit"]
        cols = lambda label, f: [f"{p[label]['families_ms'][f]:.3f}", f"{r['delta_ms'][label][f]:+.3f}",  # noqa: E731
                                 "—" if r["delta_pct"][label][f] is None else f"{r['delta_pct'][label][f]:+.1f}%"]
        body = [[f, f"{p[ref]['families_ms'][f]:.3f}"] + [x for label in have for x in cols(label, f)] for f in fams]
        total = lambda label: p[label]["profiler_ms_per_iter"]  # noqa: E731
        body.append(["**profiler total**", f"{total(ref):.3f}"] + [
            x for label in have for x in (f"{total(label):.3f}", f"{total(label) - total(ref):+.3f}",
                                          f"{(total(label) / total(ref) - 1) * 100:+.1f}%")])
        body.append(["clock, same iterations (coverage)", f"{p[ref]['clock_ms_per_iter']:.3f} "
                     f"({p[ref]['coverage']:.0%})"] + [x for label in have for x in (
                         f"{p[label]['clock_ms_per_iter']:.3f} ({p[label]['coverage']:.0%})", "", "")])
        per = "step" if r["suite"] == "decode" else "forward"
        lines += compare_table(f"where the time went: {r['cell']} (ms per {per}, {unit}, {p[ref]['iters']} profiled "
                        f"iterations after the measured ones)",
                        ["family", ref] + [h for label in have for h in (label, "Δ ms", "Δ %")], body)
        if isinstance(r["classification"], dict):
            lines += ["", "- WARNING: these profiles were sorted into families by different tables (" + ", ".join(
                f"{label}: {v}" for label, v in r["classification"].items()) + "); a family's delta also holds what "
                "the tables put in different families"]
        lines += [""] + [f"- {label}: lost the most in **{r['lost_most'][label]}** "
                         f"({r['delta_ms'][label][r['lost_most'][label]]:+.3f} ms), recovered the most in "
                         f"{r['won_most'][label]} ({r['delta_ms'][label][r['won_most'][label]]:+.3f} ms)"
                         for label in have]
        lines += [f"- GEMM kernels, {label}: " + "; ".join(
            f"{g['name'][:70]} ({g['library']}, align {g['align'] or 'n/a'}, tile {g['tile'] or 'n/a'}) "
            f"{g['ms_per_iter']:.3f} ms x{g['count']:g}" for g in p[label]["gemm_kernels"][:4])
            for label in [ref] + have if p[label]["gemm_kernels"]]
    return lines


def _default_cell(rep):
    """The distribution figure's cell: the last one every candidate ran, of the last timed suite that has one."""
    for suite in reversed([m for m in rep["suites"] if SUITES[m].device_facts]):
        both = [r for r in rep[suite] if all(r["speedup"].values()) and r["speedup"]]
        if both:
            return suite, both[-1]["cell"]
    return None, None


def write_plots(rep, sides, out, cell=None):
    model = rep["reference"]["runs"][0]["model"]
    names = [s["label"] for s in sides]
    made = []
    timed = [m for m in rep["suites"] if SUITES[m].device_facts]
    for m in timed:
        made += SUITES[m].compare_plots(rep[m], sides, out, model)
    if timed:
        mib = lambda rows, key: {n: [r["values"][n].get(key) and r["values"][n][key] / 2**20 for r in rows]  # noqa: E731
                                 for n in names}
        short = lambda rows: [r["cell"].split("[", 1)[-1].rstrip("]") for r in rows]  # noqa: E731
        specs = [(short(rep[m]), mib(rep[m], "peak_allocated_bytes"), f"{m}: peak allocated", "MiB", None)
                 for m in timed]
        specs += [(short(rep[m]), mib(rep[m], "kv_cache_bytes"), f"{m}: KV cache at the end of a generation", "MiB",
                   None) for m in timed if any(v.get("kv_cache_bytes") for r in rep[m] for v in r["values"].values())]
        made.append(plots.save(plots.panels(specs), out / "memory.png"))
    for m in rep["suites"]:
        if m not in timed:
            made += SUITES[m].compare_plots(rep[m], sides, out, model)
    for r in rep.get("time_went", []):
        made.append(plots.save(plots.stacked_bars(
            {label: p["families_ms"] for label, p in r["profiles"].items()},
            f"{r['cell']}: where the time went ({r['profiles'][rep['reference']['label']]['unit']})",
            "ms per " + ("step" if r["suite"] == "decode" else "forward"),
            {label: p["clock_ms_per_iter"] for label, p in r["profiles"].items()}),
            out / f"time_went_{r['cell'].replace('[', '_').rstrip(']')}.png"))
    suite, cid = (next(s["cells"][cell]["suite"] for s in sides if cell in s["cells"]), cell) if cell \
        else _default_cell(rep)
    if cid:
        metric = SUITES[suite].headline
        samples = {s["label"]: [x for t in s["raw"][cid]["samples_ms"][metric] for x in t]
                   for s in sides if missing(s, cid) is None}
        made.append(plots.save(plots.distribution(samples, f"{cid}: raw samples", "ms" + (
            " per token" if metric == "step" else "")), out / "distribution.png"))
    return made


def write(reference_dirs, candidates, out, cell=None, jobs="", skipped=()):
    """report.md, report.json and the figures in `out`. Every table is rendered before any file is written, so
    a run dir holding a value of the wrong type stops the report with one line and leaves no partial figure."""
    try:
        rep, sides = build(reference_dirs, candidates)
        rep["skipped"] = list(skipped)
        md = markdown(rep)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ResultsError(f"a run dir holds a value of the wrong type ({type(e).__name__}: {e}); runs: "
                           f"{', '.join(map(str, [*reference_dirs, *(d for ds in candidates.values() for d in ds)]))}"
                           ) from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out: {out} is a file; allowed: a folder (made if missing)")
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = write_plots(rep, sides, out, cell)
    write_json(out / "report.json", rep)
    md = md.replace("\n\nRuns:", f"\n\n{jobs}\nRuns:", 1) if jobs else md
    (out / "report.md").write_text(md + "\n" + "\n".join(f"![{n}]({n})" for n in rep["plots"]) + "\n")
    return rep


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


def parse_candidates(specs):
    """--candidate LABEL=RUN [RUN ...], repeated -> {label: [run dirs]}."""
    out = {}
    for first, *more in specs:
        label, sep, run = first.rpartition("=")   # labels may hold "=" themselves (asvd rounding=32)
        if not sep or not label or not run:
            raise ResultsError(f"--candidate: {first!r} is not LABEL=RUN; e.g. --candidate palu=results/G/palu-infer")
        out.setdefault(label, []).extend([run, *more])
    return out
