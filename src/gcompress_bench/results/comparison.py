"""One reference (the baseline runs) against any number of labelled candidates (compressed runs):
speedups, memory, quality with paired tests per candidate, each method's facts, and an environment
check, so a comparison across machines or settings is refused or flagged, never hidden."""
import json
from pathlib import Path

from gcompress_bench import fmt, methods
from gcompress_bench.fmt import fmt_mib
from gcompress_bench.measure import ops
from gcompress_bench.results import paired as paired_test
from gcompress_bench.results import plots, report
from gcompress_bench.results.report import build_summary
from gcompress_bench.results.store import ResultsError, load_raw, read_json, write_json
from gcompress_bench.suites import SUITES, lmeval, longctx, tables

ENV_KEYS = ("gpu", "gpu_count", "driver", "cuda", "torch", "transformers", "lm_eval", "host", "cpu")
RUN_KEYS = ("model", "weights", "dtype", "timer", "device")
# The settings that change any number; each suite adds its own (Suite.settings). Runs merged into one column
# must agree on them.
RUN_SETTINGS = ("model", "dtype", "profile")
# the suites this module lays out itself; any other registered suite gets a table of its compare_keys
OWN_TABLES = ("prefill", "decode", "ppl", "lmeval", "longctx")


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
    side = {"label": label, "runs": [], "cells": {}, "raw": {}, "envs": [], "variant": None, "facts": None}
    for d in map(Path, run_dirs):
        s = report.build_summary(d)
        raw = load_raw(d)["cells"]
        for cid, cell in s["cells"].items():
            if side["cells"].get(cid, {}).get("status") == "ok" and cell["status"] != "ok":
                continue   # a finished copy of a cell (e.g. from a re-run shard) wins over a failed one
            side["cells"][cid], side["raw"][cid] = cell, raw[cid]
        timing = any(SUITES[c["suite"]].device_facts for c in s["cells"].values() if c.get("suite") in SUITES)
        side["runs"].append({"dir": str(d), "run_id": s["run_id"], "variant": s["variant"], "timing": timing,
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
    return side


def _missing(side, cid):
    c = side["cells"].get(cid)
    if c is None:
        return "not in these runs"
    return None if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"


def _suite_ids(sides, suite):
    params = {cid: c["params"] for s in sides for cid, c in s["cells"].items() if c.get("suite") == suite}
    return sorted(params, key=lambda cid: tuple(str(v).zfill(8) for v in params[cid].values()))


def _p50(v, fmt):
    """A p50 as a table shows it, marked where the host, not the device, set the cell's time."""
    return _v(v, "p50", fmt) + (" **host-bound**" if v.get("host_bound") else "")


def _latency_rows(ref, cands, suite, metric):
    rows = []
    for cid in _suite_ids([ref, *cands], suite):
        row = {"cell": cid, "suite": suite, "values": {}, "speedup": {},
               "params": next(s["cells"][cid]["params"] for s in (ref, *cands) if cid in s["cells"])}
        for side in (ref, *cands):
            why, c = _missing(side, cid), side["cells"].get(cid, {})
            row["values"][side["label"]] = {"missing": why} if why else {
                **{k: c["stats_ms"][metric][k] for k in ("p50", "p90", "p99", "std")},
                "tokens_per_s": c["tokens_per_s"], "ttft_ms": c.get("ttft_ms"), "roofline": c.get("roofline"),
                "peak_allocated_bytes": c["memory"]["peak_allocated_bytes"],
                "peak_reserved_bytes": c["memory"]["peak_reserved_bytes"], "kv_cache_bytes": c.get("kv_cache_bytes"),
                "host_bound": c.get("host_bound"), "energy": c.get("energy")}
        base = row["values"][ref["label"]].get("p50")
        for side in cands:
            p50 = row["values"][side["label"]].get("p50")
            row["speedup"][side["label"]] = base / p50 if base and p50 else None
        rows.append(row)
    return rows


def _quality_rows(ref, cands, suite, keys):
    tests = {s["label"]: paired_test.compare_cells(ref["raw"], s["raw"]) for s in cands}
    rows = []
    for cid in _suite_ids([ref, *cands], suite):
        row = {"cell": cid, "paired": {label: t.get(cid) for label, t in tests.items()}, "values": {}}
        for side in (ref, *cands):
            why = _missing(side, cid)
            row["values"][side["label"]] = {"missing": why} if why else {k: side["cells"][cid].get(k) for k in keys}
        rows.append(row)
    return rows


def _time_went_rows(ref, cands):
    """Per cell profiled (--ops-profile) in the reference and a candidate: each operator family's time per
    iteration on every side, each candidate's delta, and the family that lost (or won back) the most."""
    rows = []
    for suite in ("prefill", "decode"):
        for cid in _suite_ids([ref, *cands], suite):
            prof = {s["label"]: s["cells"][cid]["ops_profile"] for s in (ref, *cands)
                    if _missing(s, cid) is None and s["cells"][cid].get("ops_profile")}
            if ref["label"] not in prof or len(prof) < 2:
                continue
            base = prof[ref["label"]]["families_ms"]
            delta = {label: {f: p["families_ms"][f] - base[f] for f in ops.FAMILY_NAMES}
                     for label, p in prof.items() if label != ref["label"]}
            tables = {label: p.get("classification", "unversioned") for label, p in prof.items()}
            rows.append({"cell": cid, "suite": suite, "profiles": prof, "delta_ms": delta,
                         "classification": tables if len(set(tables.values())) > 1 else next(iter(tables.values())),
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
    return {
        "reference": {"label": ref["label"], "runs": ref["runs"]},
        "candidates": [{"label": s["label"], "variant": s["variant"], "runs": s["runs"], "facts": s["facts"]}
                       for s in cands],
        "environment": ref["envs"][0], "warnings": environment_check(sides),
        "prefill": _latency_rows(ref, cands, "prefill", "latency"),
        "decode": _latency_rows(ref, cands, "decode", "step"),
        "ppl": _quality_rows(ref, cands, "ppl", SUITES["ppl"].compare_keys),
        "time_went": _time_went_rows(ref, cands),
        "lmeval": _quality_rows(ref, cands, "lmeval", SUITES["lmeval"].compare_keys),
        "longctx": _quality_rows(ref, cands, "longctx", SUITES["longctx"].compare_keys),
        "cost": [c for c in map(_cost, sides) if c],
        "other_suites": {m: _quality_rows(ref, cands, m, s.compare_keys) for m, s in SUITES.items()
                         if m not in OWN_TABLES and s.compare_keys and _suite_ids(sides, m)},
    }, sides


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
    return {"label": side["label"], "runs": len(runs), "wall_s": wall, "efficiency": parts["measured"] / wall,
            "device_minutes": wall / 60, "parts_s": parts}


def _lmeval_metrics(row):
    """An lmeval row's metrics (acc and acc_norm, or a RULER task's score), from a side that ran it."""
    return lmeval.metrics(next((v for v in row["values"].values() if "missing" not in v), {})).names


def _v(values, key, fmt):
    return values["missing"] if "missing" in values else ("n/a" if values.get(key) is None else fmt(values[key]))


def _ratio(row, label, ref, key):
    a, b = row["values"][ref].get(key), row["values"][label].get(key)
    return f"{b / a:.3f}" if a and b is not None else "—"


def _table(title, head, rows):
    return ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def markdown(rep):
    ms, ref = (lambda x: f"{x:.3f}"), rep["reference"]["label"]   # noqa: E731
    labels = [c["label"] for c in rep["candidates"]]
    runs = lambda side: ", ".join(Path(r["dir"]).name for r in side["runs"])  # noqa: E731
    lines = [f"# {ref} vs {', '.join(labels)}", "", f"Runs: {ref}: {runs(rep['reference'])}; " +
             "; ".join(f"{c['label']}: {runs(c)}" for c in rep["candidates"]), ""]
    lines += [f"- WARNING: {w}" for w in rep.get("skipped", [])]
    lines += [f"- WARNING: {w}" for w in rep["warnings"]] or ["- environment: every run on the same GPU, driver, "
                                                             "torch, transformers, model, dtype and timer"]
    env = rep["environment"]
    lines.append(f"- GPU {env.get('gpu') or 'none'} (driver {env.get('driver')}), torch {env.get('torch')}, "
                 f"transformers {env.get('transformers')}, host {env.get('host')}")
    sp = lambda r, label: f"{r['speedup'][label]:.3f}x" if r["speedup"][label] else "missing"  # noqa: E731
    if rep["prefill"]:
        lines += _table("prefill latency (ms; speedup = reference p50 / candidate p50)",
                        ["cell", f"{ref} p50", "p99"] + [h for label in labels for h in (f"{label} p50", "p99",
                                                                                          "speedup")],
                        [[r["cell"], _p50(r["values"][ref], ms), _v(r["values"][ref], "p99", ms)] +
                         [x for label in labels for x in (_p50(r["values"][label], ms),
                                                          _v(r["values"][label], "p99", ms), sp(r, label))]
                         for r in rep["prefill"]])
    if rep["decode"]:
        gbps = lambda v: f"{v['roofline']['GBps']:.0f}" if v.get("roofline") else "n/a"  # noqa: E731
        cols = lambda v: [_p50(v, ms), _v(v, "p99", ms), _v(v, "tokens_per_s", "{:.1f}".format),  # noqa: E731
                          _v(v, "ttft_ms", ms), "—" if "missing" in v else gbps(v)]
        lines += _table("decode (ms/token p50, p99, tokens/s, time to first token ms, GB/s)",
                        ["cell", f"{ref} p50", "p99", "tok/s", "TTFT", "GB/s"] +
                        [h for label in labels for h in (f"{label} p50", "p99", "tok/s", "TTFT", "GB/s", "speedup")],
                        [[r["cell"], *cols(r["values"][ref])] +
                         [x for label in labels for x in (*cols(r["values"][label]), sp(r, label))]
                         for r in rep["decode"]])
    mem_rows = rep["prefill"] + rep["decode"]
    if any((v.get("energy") or {}).get("available") for r in mem_rows for v in r["values"].values()):
        lines += _energy_table(mem_rows, ref, labels)
    if mem_rows:
        mib = lambda v, k: _v(v, k, fmt_mib)  # noqa: E731
        lines += _table("memory (MiB: peak allocated, reserved, KV cache; ratios to the reference)",
                        ["cell", f"{ref} alloc", "reserved", "KV"] +
                        [h for label in labels for h in (f"{label} alloc", "reserved", "KV", "alloc ratio", "KV ratio")],
                        [[r["cell"]] + [mib(r["values"][ref], k) for k in ("peak_allocated_bytes", "peak_reserved_bytes",
                                                                             "kv_cache_bytes")] +
                         [x for label in labels for x in (
                             *(mib(r["values"][label], k) for k in ("peak_allocated_bytes", "peak_reserved_bytes",
                                                                     "kv_cache_bytes")),
                             _ratio(r, label, ref, "peak_allocated_bytes"), _ratio(r, label, ref, "kv_cache_bytes"))]
                         for r in mem_rows])
    if rep["ppl"]:
        f4 = "{:.4f}".format
        ratio = lambda p: f"{p['ppl_ratio']:.4f} ({'same' if p['same_windows'] else 'DIFFERENT'} windows)" \
            if p else "—"  # noqa: E731
        lines += _table("perplexity (ratio = candidate / reference, over the reference's windows)",
                        ["cell", ref] + [h for label in labels for h in (label, "ratio")] + ["dataset"],
                        [[r["cell"], _v(r["values"][ref], "ppl", f4)] +
                         [x for label in labels for x in (_v(r["values"][label], "ppl", f4), ratio(r["paired"][label]))]
                         + [str(next((v["dataset"] for v in r["values"].values() if "dataset" in v), "—"))]
                         for r in rep["ppl"]])
    if rep["lmeval"]:
        def acc(v, m):
            return v["missing"] if "missing" in v else fmt.plus_minus(v[m], v[m + "_stderr"])

        def diff(q):
            return (f"{q['diff']:+.4f} (p {q['mcnemar_p']:.3f}; {q['only_reference_right']}/"
                    f"{q['only_candidate_right']})") if q else "—"
        lines += _table("accuracy (± stderr; diff to the reference, exact McNemar p over the same items; items only "
                        "the reference / only the candidate got right; RULER score: share of gold strings found, "
                        "an item right when all are)",
                        ["cell", "metric", ref] + [h for label in labels for h in (label, "diff")] + ["data"],
                        [[r["cell"], m, acc(r["values"][ref], m)] +
                         [x for label in labels for x in (acc(r["values"][label], m),
                                                          diff((r["paired"][label] or {}).get(m)))]
                         + [str(next((v["source"] for v in r["values"].values() if "source" in v), "—"))]
                         for r in rep["lmeval"] for m in _lmeval_metrics(r)])
    if rep["longctx"]:
        def verdict(p):
            return report.longctx_verdict(p) if p else "—"
        lines += _table("long-context retrieval (exact-match accuracy; paired over the same prompts)",
                        ["cell", ref] + [h for label in labels for h in (label, "paired")],
                        [[r["cell"], _v(r["values"][ref], "accuracy", "{:.3f}".format)] +
                         [x for label in labels for x in (_v(r["values"][label], "accuracy", "{:.3f}".format),
                                                          verdict(r["paired"][label]))]
                         for r in rep["longctx"]])
    if rep.get("cost"):
        kinds = [k for k in rep["cost"][0]["parts_s"] if k != "measured"]
        lines += _table("what the timing runs cost (harness efficiency = measured regions / session wall; one "
                        "device per run)", ["column", "runs", "measured s", "wall s", "efficiency", "device min"] +
                        [f"{k} s" for k in kinds],
                        [[c["label"], str(c["runs"]), f"{c['parts_s']['measured']:.1f}", f"{c['wall_s']:.1f}",
                          f"{100 * c['efficiency']:.0f}%", f"{c['device_minutes']:.1f}"] +
                         [f"{c['parts_s'].get(k, 0.0):.1f}" for k in kinds] for c in rep["cost"]])
        total = sum(c["device_minutes"] for c in rep["cost"])
        lines += ["", f"All columns: {total:.1f} device minutes."]
    for marker, rows in rep.get("other_suites", {}).items():
        keys = SUITES[marker].compare_keys
        lines += _table(f"{marker} ({SUITES[marker].description})",
                        ["cell"] + [f"{side} {k}" for side in [ref, *labels] for k in keys],
                        [[r["cell"]] + [_v(r["values"][side], k, str) for side in [ref, *labels] for k in keys]
                         for r in rows])
    lines += _time_went_markdown(rep.get("time_went", []), ref, labels)
    for c in rep["candidates"]:
        if c["facts"]:
            m = methods.load().get(c["variant"], methods.Method())
            lines += ["", f"# {c['label']}", *m.markdown(c["facts"])]
    return "\n".join(lines) + "\n"


def _energy_table(rows, ref, labels):
    """Joules per decode token (per forward in prefill) and mean power per side; ratio = candidate / reference."""
    def j(v, key):
        return v["missing"] if "missing" in v else tables.joules(v, key)

    def key(r):
        return SUITES[r["suite"]].joules

    def ratio(r, label):
        a, b = ((r["values"][x].get("energy") or {}).get(key(r)) for x in (ref, label))
        return f"{b / a:.3f}" if isinstance(a, float) and isinstance(b, float) and a > 0 else "—"
    return _table("energy (decode: J per generated token; prefill: J per forward; mean W; ratio = candidate / "
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
        lines += _table(f"where the time went: {r['cell']} (ms per {per}, {unit}, {p[ref]['iters']} profiled "
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
    for suite in ("decode", "prefill"):
        both = [r for r in rep[suite] if all(r["speedup"].values()) and r["speedup"]]
        if both:
            return suite, both[-1]["cell"]
    return None, None


def write_plots(rep, sides, out, cell=None):
    model = rep["reference"]["runs"][0]["model"]
    series = {s["label"]: s["cells"] for s in sides}
    labels = [c["label"] for c in rep["candidates"]]
    made = []
    if rep["prefill"]:
        made.append(plots.save(plots.prefill_latency(series, model), out / "prefill_latency.png"))
        made.append(plots.save(plots.speedup_heatmaps(
            {label: {(r["params"]["batch"], r["params"]["seq_len"]): r["speedup"][label] for r in rep["prefill"]}
             for label in labels}, "prefill speedup (p50)", "batch B", "sequence length S"), out / "prefill_speedup.png"))
    if rep["decode"]:
        made.append(plots.save(plots.decode_latency(series, model), out / "decode_ms_per_token.png"))
        col = lambda p: (p["ctx"], p["gen"], p.get("mode", "eager"))   # noqa: E731
        made.append(plots.save(plots.speedup_heatmaps(
            {label: {(r["params"]["batch"], col(r["params"])): r["speedup"][label] for r in rep["decode"]}
             for label in labels}, "decode speedup (ms/token p50)", "batch B", "(ctx, gen, mode)"),
            out / "decode_speedup.png"))
    names = [s["label"] for s in sides]
    mem = rep["prefill"] + rep["decode"]
    if mem:
        mib = lambda rows, key: {n: [r["values"][n].get(key) and r["values"][n][key] / 2**20 for r in rows]  # noqa: E731
                                 for n in names}
        short = lambda rows: [r["cell"].split("[", 1)[-1].rstrip("]") for r in rows]  # noqa: E731
        specs = [(short(rep[s]), mib(rep[s], "peak_allocated_bytes"), f"{s}: peak allocated", "MiB", None)
                 for s in ("prefill", "decode") if rep[s]]
        if rep["decode"]:
            specs.append((short(rep["decode"]), mib(rep["decode"], "kv_cache_bytes"),
                          "decode: KV cache at the end of a generation", "MiB", None))
        made.append(plots.save(plots.panels(specs), out / "memory.png"))
    if rep["ppl"]:
        made.append(plots.save(plots.grouped_bars([r["cell"] for r in rep["ppl"]],
                                                  {n: [r["values"][n].get("ppl") for r in rep["ppl"]] for n in names},
                                                  "perplexity (lower is better)", "perplexity"), out / "ppl.png"))
    if rep["lmeval"]:
        by_metric = {m: [r for r in rep["lmeval"] if m in _lmeval_metrics(r)]
                     for m in lmeval.CHOICE.names + lmeval.RULER.names}
        made.append(plots.save(plots.panels([
            ([r["cell"].removeprefix("test_lmeval") for r in rows], {n: [r["values"][n].get(m) for r in rows]
                                                                     for n in names}, f"{m} ± stderr", m,
             {n: [r["values"][n].get(f"{m}_stderr") for r in rows] for n in names})
            for m, rows in by_metric.items() if rows]), out / "accuracy.png"))
    for s in sides:
        for task, grid in longctx.grids(s["raw"]).items():
            made.append(plots.save(plots.heatmap(grid, f"{s['label']}: {task} accuracy, {model}"),
                                   out / f"longctx_{task}_{s['label']}.png"))
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
        metric = "step" if suite == "decode" else "latency"
        samples = {s["label"]: [x for t in s["raw"][cid]["samples_ms"][metric] for x in t]
                   for s in sides if _missing(s, cid) is None}
        made.append(plots.save(plots.distribution(samples, f"{cid}: raw samples", "ms" + (
            " per token" if metric == "step" else "")), out / "distribution.png"))
    return made


def write(reference_dirs, candidates, out, cell=None, jobs="", skipped=()):
    rep, sides = build(reference_dirs, candidates)
    rep["skipped"] = list(skipped)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = write_plots(rep, sides, out, cell)
    write_json(out / "report.json", rep)
    md = markdown(rep).replace("\n\nRuns:", f"\n\n{jobs}\nRuns:", 1) if jobs else markdown(rep)
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
