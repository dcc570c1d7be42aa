"""Baseline vs palu across run dirs: speedups, memory, quality with paired tests, compression facts,
and an environment check, so a comparison across machines or settings is flagged, not hidden."""
import json
from pathlib import Path

from . import paired as paired_test, plots, report
from .results import ResultsError, read_json, write_json

ENV_KEYS = ("gpu", "gpu_count", "driver", "cuda", "torch", "transformers", "lm_eval", "host", "cpu")
RUN_KEYS = ("model", "weights", "dtype", "timer", "device")
SIDES = ("baseline", "palu")


# The settings that change a number, per suite a run holds: runs merged into one side must agree on them.
SETTINGS = {"all": ("model", "dtype", "profile", "palu"),
            "infer_sweep": ("prefill.warmup", "prefill.iters", "prefill.trials", "decode.warmup", "decode.iters",
                            "decode.trials", "decode.mode", "seed"),
            "ppl": ("ppl.corpus", "ppl.seq_len", "ppl.stride"),
            "lmeval": ("lmeval.limit", "lmeval.batch_size", "lmeval.tasks_path")}


def settings(cfg):
    """{setting: value} of one run's config.json; a baseline run has no method options."""
    keys = SETTINGS["all"] + tuple(k for suite in cfg.get("suites", []) for k in SETTINGS.get(suite, ()))
    out = {}
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if key == "palu":
            if cfg.get("variant") != "palu":
                continue
            out.update({f"palu.{k}": v for k, v in value.items()})
            continue
        out[key] = value
    return out


def _check_agree(name, runs):
    """One side's runs must agree on every setting they share; else one line naming settings and runs."""
    differ = []
    for key in sorted({k for r in runs for k in r["settings"]}):
        vals = {json.dumps(r["settings"][key]): r for r in runs if key in r["settings"]}
        if len(vals) > 1:
            differ.append(f"{key} (" + ", ".join(f"{v} in {Path(r['dir']).name}" for v, r in vals.items()) + ")")
    if differ:
        raise ResultsError(f"the {name} runs differ in {'; '.join(differ)}: one column would mix settings; "
                           f"allowed: runs of one setting per side (choose them with --{name} RUN ...)")


def load_side(run_dirs):
    """Merge one variant's run dirs (its infer_sweep, ppl and lmeval jobs, or the shards of one)."""
    side = {"runs": [], "cells": {}, "raw": {}, "envs": [], "palu": None}
    for d in map(Path, run_dirs):
        s = report.build_summary(d)
        raw = read_json(d / "raw.json")["cells"]
        for cid, cell in s["cells"].items():
            if side["cells"].get(cid, {}).get("status") == "ok" and cell["status"] != "ok":
                continue   # a finished copy of a cell (e.g. from a re-run shard) wins over a failed one
            side["cells"][cid], side["raw"][cid] = cell, raw[cid]
        timing = any(c.get("suite") in ("prefill", "decode") for c in s["cells"].values())
        side["runs"].append({"dir": str(d), "run_id": s["run_id"], "variant": s["variant"], "timing": timing,
                             "span": [read_json(d / "env.json").get("time_utc"), s.get("updated_utc")],
                             "settings": settings(read_json(d / "config.json")), **{k: s[k] for k in RUN_KEYS}})
        side["envs"].append(read_json(d / "env.json"))
        side["palu"] = side["palu"] or s["palu"]
    return side


def _missing(side, cid):
    c = side["cells"].get(cid)
    if c is None:
        return "not in these runs"
    return None if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"


def _suite_ids(b, p, suite):
    ids = {cid for side in (b, p) for cid, c in side["cells"].items() if c.get("suite") == suite}
    return sorted(ids, key=lambda cid: tuple(str(v).zfill(8) for v in (b["cells"].get(cid) or p["cells"][cid])["params"].values()))


def _latency_rows(b, p, suite, metric):
    rows = []
    for cid in _suite_ids(b, p, suite):
        row = {"cell": cid, "params": (b["cells"].get(cid) or p["cells"][cid])["params"]}
        for name, side in zip(SIDES, (b, p)):
            why = _missing(side, cid)
            c = side["cells"].get(cid, {})
            row[name] = {"missing": why} if why else {
                **{k: c["stats_ms"][metric][k] for k in ("p50", "p90", "p99", "std")},
                "tokens_per_s": c["tokens_per_s"], "ttft_ms": c.get("ttft_ms"),
                "peak_allocated_bytes": c["memory"]["peak_allocated_bytes"],
                "peak_reserved_bytes": c["memory"]["peak_reserved_bytes"],
                "kv_cache_bytes": c.get("kv_cache_bytes")}
        both = all("p50" in row[n] for n in SIDES)
        row["speedup"] = row["baseline"]["p50"] / row["palu"]["p50"] if both else None
        rows.append(row)
    return rows


def _quality_rows(b, p, suite, keys):
    paired = paired_test.compare_cells(b["raw"], p["raw"])
    rows = []
    for cid in _suite_ids(b, p, suite):
        row = {"cell": cid, "paired": paired.get(cid)}
        for name, side in zip(SIDES, (b, p)):
            why = _missing(side, cid)
            row[name] = {"missing": why} if why else {k: side["cells"][cid][k] for k in keys}
        rows.append(row)
    return rows


def environment_check(b, p):
    """Differences between any two runs in what decides a number: each one a warning line."""
    warnings = []
    runs = [(r, e) for side in (b, p) for r, e in zip(side["runs"], side["envs"])]
    for key in RUN_KEYS:
        vals = {str(r[key]) for r, _ in runs}
        if len(vals) > 1:
            warnings.append(f"runs differ in {key}: {sorted(vals)}; not like with like")
    for key in ENV_KEYS:
        vals = {str(e.get(key)) for _, e in runs}
        if len(vals) > 1:
            warnings.append(f"runs differ in {key}: {sorted(vals)}; a comparison across machines or software")
    shared = {k for r, _ in runs for k in r["settings"] if not k.startswith("palu.")}
    for key in sorted(shared):
        vals = {json.dumps(r["settings"][key]) for r, _ in runs if key in r["settings"]}
        if len(vals) > 1:
            warnings.append(f"baseline and palu runs differ in {key}: {sorted(vals)}; not like with like")
    timed = [(r, e) for r, e in runs if r["timing"] and all(r["span"])]
    for i, (r1, e1) in enumerate(timed):
        for r2, e2 in timed[i + 1:]:
            if e1.get("host") == e2.get("host") and r1["span"][0] <= r2["span"][1] and r2["span"][0] <= r1["span"][1]:
                warnings.append(f"timing runs {r1['run_id']} and {r2['run_id']} overlapped in time on host "
                                f"{e1.get('host')}: they shared its CPUs, so launch-bound cells are inflated")
    return warnings


def build(baseline_dirs, palu_dirs):
    b, p = load_side(baseline_dirs), load_side(palu_dirs)
    for name, side in zip(SIDES, (b, p)):
        wrong = [r["dir"] for r in side["runs"] if r["variant"] != name]
        if wrong:
            raise ResultsError(f"--{name}: {wrong} are not {name} runs")
        _check_agree(name, side["runs"])
    for key in ("model", "dtype"):   # a speedup or a ratio between two models is not a result
        vals = {r["settings"][key] for side in (b, p) for r in side["runs"]}
        if len(vals) > 1:
            raise ResultsError(f"baseline and palu runs measure different {key}s ({', '.join(sorted(map(str, vals)))}); "
                               f"allowed: both sides of one {key}")
    return {
        "baseline_runs": b["runs"], "palu_runs": p["runs"],
        "environment": {name: side["envs"][0] for name, side in zip(SIDES, (b, p))},
        "warnings": environment_check(b, p),
        "prefill": _latency_rows(b, p, "prefill", "latency"),
        "decode": _latency_rows(b, p, "decode", "step"),
        "ppl": _quality_rows(b, p, "ppl", ("ppl", "nll", "tokens", "windows", "dataset")),
        "lmeval": _quality_rows(b, p, "lmeval", ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n",
                                                 "fewshot", "source")),
        "palu": p["palu"],
    }, b, p


def _v(side, key, fmt):
    return side["missing"] if "missing" in side else ("n/a" if side.get(key) is None else fmt(side[key]))


def _mib(n):
    return f"{n / 2**20:.1f}"


def _ratio(row, key):
    a, b = row["baseline"].get(key), row["palu"].get(key)
    return f"{b / a:.3f}" if a and b is not None else "—"


def markdown(rep):
    ms = lambda x: f"{x:.3f}"  # noqa: E731
    lines = ["# baseline vs palu", "",
             "Runs: baseline " + ", ".join(r["run_id"] for r in rep["baseline_runs"]) +
             "; palu " + ", ".join(r["run_id"] for r in rep["palu_runs"]), ""]
    lines += [f"- WARNING: {w}" for w in rep.get("skipped", [])]
    lines += [f"- WARNING: {w}" for w in rep["warnings"]] or ["- environment: every run on the same GPU, driver, "
                                                             "torch, transformers, model, dtype and timer"]
    env = rep["environment"]["baseline"]
    lines.append(f"- GPU {env.get('gpu') or 'none'} (driver {env.get('driver')}), torch {env.get('torch')}, "
                 f"transformers {env.get('transformers')}, host {env.get('host')}")
    if rep["prefill"]:
        lines += ["", "## prefill latency (ms)", "", "| cell | baseline p50 | p90 | p99 | palu p50 | p90 | p99 | "
                  "speedup |", "|---|---|---|---|---|---|---|---|"]
        for r in rep["prefill"]:
            sp = f"{r['speedup']:.3f}x" if r["speedup"] else "missing"
            lines.append(f"| {r['cell']} | " + " | ".join(_v(r[n], k, ms) for n in SIDES for k in ("p50", "p90", "p99"))
                         + f" | {sp} |")
    if rep["decode"]:
        lines += ["", "## decode (ms/token, tokens/s, time to first token ms)", "",
                  "| cell | baseline ms/token p50 | p99 | tokens/s | TTFT | palu ms/token p50 | p99 | tokens/s | TTFT | "
                  "speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rep["decode"]:
            sp = f"{r['speedup']:.3f}x" if r["speedup"] else "missing"
            lines.append(f"| {r['cell']} | " + " | ".join(
                _v(r[n], k, f) for n in SIDES for k, f in (("p50", ms), ("p99", ms), ("tokens_per_s", "{:.1f}".format),
                                                          ("ttft_ms", ms))) + f" | {sp} |")
    mem_rows = rep["prefill"] + rep["decode"]
    if mem_rows:
        lines += ["", "## memory (MiB)", "", "| cell | baseline peak alloc | reserved | KV cache | palu peak alloc | "
                  "reserved | KV cache | palu/baseline alloc | KV |", "|---|---|---|---|---|---|---|---|---|"]
        for r in mem_rows:
            lines.append(f"| {r['cell']} | " + " | ".join(
                _v(r[n], k, _mib) for n in SIDES for k in ("peak_allocated_bytes", "peak_reserved_bytes",
                                                           "kv_cache_bytes"))
                + f" | {_ratio(r, 'peak_allocated_bytes')} | {_ratio(r, 'kv_cache_bytes')} |")
    if rep["ppl"]:
        lines += ["", "## perplexity", "", "| cell | baseline | palu | ratio | same windows | dataset |",
                  "|---|---|---|---|---|---|"]
        for r in rep["ppl"]:
            pr = r["paired"]
            lines.append(f"| {r['cell']} | {_v(r['baseline'], 'ppl', '{:.4f}'.format)} | "
                         f"{_v(r['palu'], 'ppl', '{:.4f}'.format)} | {pr['ppl_ratio']:.4f} | {pr['same_windows']} | "
                         f"{r['palu'].get('dataset', r['baseline'].get('dataset', '—'))} |" if pr else
                         f"| {r['cell']} | {_v(r['baseline'], 'ppl', str)} | {_v(r['palu'], 'ppl', str)} | — | — | — |")
    if rep["lmeval"]:
        lines += ["", "## accuracy (± stderr; paired: exact McNemar over the same items)", "",
                  "| cell | metric | baseline | palu | diff | only baseline right | only palu right | p | data |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rep["lmeval"]:
            for m in ("acc", "acc_norm"):
                cols = [r[n]["missing"] if "missing" in r[n] else report.plus_minus(r[n][m], r[n][m + "_stderr"])
                        for n in SIDES]
                q = (r["paired"] or {}).get(m)
                tail = (f"{q['diff']:+.4f} | {q['only_baseline_right']} | {q['only_palu_right']} | "
                        f"{q['mcnemar_p']:.4f}") if q else "— | — | — | —"
                lines.append(f"| {r['cell']} | {m} | {cols[0]} | {cols[1]} | {tail} | "
                             f"{r['palu'].get('source', r['baseline'].get('source', '—'))} |")
    if rep["palu"]:
        lines += report._palu_markdown(rep["palu"])
    return "\n".join(lines) + "\n"


def _default_cell(rep):
    for suite in ("decode", "prefill"):
        both = [r for r in rep[suite] if r["speedup"]]
        if both:
            return suite, both[-1]["cell"]
    return None, None


def write_plots(rep, b, p, out, cell=None):
    model = rep["baseline_runs"][0]["model"]
    series = {"baseline": b["cells"], "palu": p["cells"]}
    made = []
    if rep["prefill"]:
        made.append(plots.save(plots.prefill_latency(series, model), out / "prefill_latency.png"))
        rows, cols = sorted({r["params"]["batch"] for r in rep["prefill"]}), sorted(
            {r["params"]["seq_len"] for r in rep["prefill"]})
        vals = {(r["params"]["batch"], r["params"]["seq_len"]): r["speedup"] for r in rep["prefill"]}
        made.append(plots.save(plots.speedup_heatmap(rows, cols, vals, "prefill speedup (p50)", "batch B",
                                                     "sequence length S"), out / "prefill_speedup.png"))
    if rep["decode"]:
        made.append(plots.save(plots.decode_latency(series, model), out / "decode_ms_per_token.png"))
        rows = sorted({r["params"]["batch"] for r in rep["decode"]})
        col = lambda p: (p["ctx"], p["gen"], p.get("mode", "eager"))   # noqa: E731
        cols = sorted({col(r["params"]) for r in rep["decode"]})
        vals = {(r["params"]["batch"], col(r["params"])): r["speedup"] for r in rep["decode"]}
        made.append(plots.save(plots.speedup_heatmap(rows, cols, vals, "decode speedup (ms/token p50)", "batch B",
                                                     "(ctx, gen, mode)"), out / "decode_speedup.png"))
    mem = rep["prefill"] + rep["decode"]
    if mem:
        mib = lambda rows, key: {n: [r[n].get(key) and r[n][key] / 2**20 for r in rows] for n in SIDES}  # noqa: E731
        short = lambda rows: [r["cell"].split("[", 1)[-1].rstrip("]") for r in rows]  # noqa: E731
        specs = [(short(rep[s]), mib(rep[s], "peak_allocated_bytes"), f"{s}: peak allocated", "MiB", None)
                 for s in ("prefill", "decode") if rep[s]]
        if rep["decode"]:
            specs.append((short(rep["decode"]), mib(rep["decode"], "kv_cache_bytes"),
                          "decode: KV cache at the end of a generation", "MiB", None))
        made.append(plots.save(plots.panels(specs), out / "memory.png"))
    if rep["ppl"]:
        made.append(plots.save(plots.grouped_bars([r["cell"] for r in rep["ppl"]],
                                                  {n: [r[n].get("ppl") for r in rep["ppl"]] for n in SIDES},
                                                  "perplexity (lower is better)", "perplexity"), out / "ppl.png"))
    if rep["lmeval"]:
        labels = [r["cell"].removeprefix("test_lmeval") for r in rep["lmeval"]]
        made.append(plots.save(plots.panels([
            (labels, {n: [r[n].get(m) for r in rep["lmeval"]] for n in SIDES}, f"{m} ± stderr", m,
             {n: [r[n].get(f"{m}_stderr") for r in rep["lmeval"]] for n in SIDES}) for m in ("acc", "acc_norm")]),
            out / "accuracy.png"))
    suite, cid = (("decode" if cell.startswith("test_decode") else "prefill"), cell) if cell else _default_cell(rep)
    if cid:
        metric = "step" if suite == "decode" else "latency"
        samples = {n: [x for t in side["raw"][cid]["samples_ms"][metric] for x in t]
                   for n, side in zip(SIDES, (b, p)) if _missing(side, cid) is None}
        made.append(plots.save(plots.distribution(samples, f"{cid}: raw samples", "ms" + (
            " per token" if metric == "step" else "")), out / "distribution.png"))
    return made


def write(baseline_dirs, palu_dirs, out, cell=None, jobs="", skipped=()):
    rep, b, p = build(baseline_dirs, palu_dirs)
    rep["skipped"] = list(skipped)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = write_plots(rep, b, p, out, cell)
    write_json(out / "report.json", rep)
    md = markdown(rep).replace("\n\nRuns:", f"\n\n{jobs}\nRuns:", 1) if jobs else markdown(rep)
    (out / "report.md").write_text(md + "\n" + "\n".join(f"![{n}]({n})" for n in rep["plots"]) + "\n")
    return rep
