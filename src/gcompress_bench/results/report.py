"""Per-run summary: summary.json, run_summary.md and plots/, always regenerated from raw.json."""
from pathlib import Path

from gcompress_bench import methods, suites
from gcompress_bench.measure import energy
from gcompress_bench.results import paired, stats
from gcompress_bench.results.store import ResultsError, load_raw, read_json, write_json
from gcompress_bench.suites import SUITES
from gcompress_bench.suites.tables import HOST_BOUND, on_gpu, rows

# per-item data a summary replaces with statistics (or leaves in raw.json): every other field of a
# cell's record reaches summary.json as it is
RAW_ONLY = ("samples_ms", "host_samples_ms", "items", "window_starts", "window_nll", "window_tokens")
NOISY = 0.2        # a launch rate or a cell's host time that moves more than this between measurements
HOST_SHARE = 0.5   # host time drift is checked in cells whose host time is at least this share of the measured


def _cell_summary(rec, ceilings):
    out = {k: v for k, v in rec.items() if k not in RAW_ONLY}
    if rec.get("status") != "ok" or "samples_ms" not in rec:
        return out
    out["stats_ms"] = {name: stats.describe(trials) for name, trials in rec["samples_ms"].items()}
    suite = SUITES[rec["suite"]]
    out.update(suite.derive(rec, out["stats_ms"]))
    out.update(suite.against_ceilings(out, ceilings))
    host = rec.get("host_samples_ms")
    if host:
        out["host_stats_ms"] = {name: stats.describe(trials) for name, trials in host.items()}
        name = next(iter(host))
        # the host's jitter moves a cell's time only where issuing the work takes a good part of it
        if out["host_stats_ms"][name]["p50"] >= HOST_SHARE * out["stats_ms"][name]["p50"]:
            out["host_drift"] = _drift(host[name])
    if rec.get("busy"):
        out["device_busy"] = rec["busy"]["device_ms_per_iter"] / out["stats_ms"][suite.headline]["p50"]
        out["host_bound"] = out["device_busy"] < HOST_BOUND
    return out


def _drift(trials):
    """How far the trials' median host times spread: (largest - smallest) / smallest; None for one trial."""
    medians = [stats.describe([t])["p50"] for t in trials if t]
    return (max(medians) - min(medians)) / min(medians) if len(medians) > 1 and min(medians) > 0 else None


def host_check(cells, start, end, gpu=True):
    """The run's host: launch rate at start and end, host-bound cells and cells whose host time drifted,
    with a warning for each sign that the host, not the device, set some of the times. On CPU no cell is
    judged host-bound: the host runs the operators itself."""
    rate = {"launches_per_s_start": start, "launches_per_s_end": end,
            "change": (end - start) / start if start and end else None}
    bound = [cid for cid, c in cells.items() if c.get("host_bound")] if gpu else []
    drifting = {cid: c["host_drift"] for cid, c in cells.items() if (c.get("host_drift") or 0) > NOISY}
    warnings = []
    if rate["change"] is not None and abs(rate["change"]) > NOISY:
        affected = (f"the host-bound cells ({', '.join(bound)}) are affected; re-run them" if bound else
                    "no cell here is host-bound, so their times are the device's")
        warnings.append(f"the host's launch rate moved {100 * rate['change']:+.0f}% between session start "
                        f"({start:.0f}/s) and end ({end:.0f}/s): the host was shared or throttled; {affected}")
    if drifting:
        warnings.append("host time per iteration drifted between trials by more than "
                        f"{100 * NOISY:.0f}% in " + ", ".join(f"{c} ({100 * d:.0f}%)" for c, d in drifting.items())
                        + ": those cells are affected; re-run them")
    return {**rate, "host_bound_cells": bound, "drifting_cells": drifting, "warnings": warnings}


def harness(raw, cells):
    """Where a timing run's wall time went: the measured regions' share, and the rest by kind of work."""
    h = raw.get("harness") or {}
    timed = [c for c in cells.values() if c.get("suite") in suites.timed()]
    if "wall_s" not in h or not timed:
        return None
    raw_cells = raw["cells"]
    parts = {
        "measured": sum(sum(map(sum, raw_cells[cid]["samples_ms"][SUITES[c["suite"]].measured or SUITES[c["suite"]].headline]))
                        for cid, c in cells.items() if c.get("status") == "ok" and "samples_ms" in raw_cells[cid]) / 1e3,
        "model load": h.get("model_load_s", 0.0), "compression": h.get("compression_s", 0.0),
        "compile": sum((c.get("compile") or {}).get("first_generation_s", 0.0) for c in timed),
        # an eager cell's untimed first generation warms it as the warm-up does (a compiled one's is "compile")
        "warm-up": sum(c.get("warmup_s", 0.0) + (0.0 if c.get("compile") else (c.get("cold") or {}).get(
            "first_generation_s", 0.0)) for c in timed),
        "profiling": sum((c.get("busy") or {}).get("profile_s", 0.0) for c in timed),
    }
    in_cells = sum(c.get("wall_s", 0.0) for c in cells.values())
    parts["other in cells"] = in_cells - sum(parts[k] for k in ("measured", "compile", "warm-up", "profiling"))
    parts["between cells"] = h["wall_s"] - in_cells - parts["model load"] - parts["compression"]
    return {"wall_s": h["wall_s"], "efficiency": parts["measured"] / h["wall_s"], "parts_s": parts}


RAW_HEADER = ("run_id", "variant", "model", "timer", "cells")


STATUSES = ("ok", "skipped", "failed")   # what measure.cell and the timer plugin record


def build_summary(run_dir):
    """The summary of one run dir; a malformed one raises ResultsError naming the file, never a KeyError."""
    run_dir = Path(run_dir)
    raw = load_raw(run_dir)
    missing = [k for k in RAW_HEADER if k not in raw] if isinstance(raw, dict) else list(RAW_HEADER)
    if missing or not isinstance(raw["cells"], dict):
        raise ResultsError(f"{run_dir / 'raw.json'}: lacks {missing or ['a cells mapping']}; not a complete "
                           "gcompress-bench raw file")
    odd = [cid for cid, c in raw["cells"].items() if not isinstance(c, dict) or c.get("status") not in STATUSES]
    if odd:
        raise ResultsError(f"{run_dir / 'raw.json'}: cell {odd[0]!r} has no status of {', '.join(STATUSES)}; not a "
                           "gcompress-bench record")
    cfg = read_json(run_dir / "config.json")
    env = read_json(run_dir / "env.json")
    try:
        return _summary(raw, cfg, env)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ResultsError(f"{run_dir}: raw.json, config.json or env.json is malformed ({type(e).__name__}: {e})") \
            from None


def _summary(raw, cfg, env):
    cells = {cid: _cell_summary(rec, env.get("ceilings")) for cid, rec in raw["cells"].items()}
    compiled = [c["compile"] for c in cells.values() if c.get("compile")]
    expected = [nodeid.split("::")[-1] for nodeid in cfg.get("cells", [])]
    not_run = [c for c in expected if c not in cells]
    decisions = [f"{cid}: {c['status']} ({c.get('reason', '')}); left out of every statistic"
                 for cid, c in cells.items() if c["status"] != "ok"]
    stop = raw.get("interrupted")
    why = raw.get("stopped") or (f"the run was interrupted by {stop['signal']}" if stop else
                                 "interrupted or deselected after start")
    decisions += [f"{cid}: not run ({why})" for cid in not_run]
    return {
        "run_id": raw["run_id"], "variant": raw["variant"], "model": raw["model"], "updated_utc": raw.get("updated_utc"),
        "weights": "synthetic weights" if raw.get("synthetic_weights") else "pretrained",
        "timer": raw["timer"], "energy": env.get("energy"), "profile": cfg.get("profile"), "dtype": cfg.get("dtype"),
        "device": cfg.get("device_resolved"), "gpu": env.get("gpu"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "suites": cfg.get("suites"),
        "iterations": ({m: {k: cfg[m][k] for k in ("warmup", "iters", "trials")} for m in suites.timed()
                        if SUITES[m].job in cfg.get("suites", ["infer_sweep"])} or None),
        "label": methods.label(cfg) if cfg.get("variant") in methods.load() else raw["variant"],
        # measured facts live in raw.json; run dirs written before kept them in config.json as <method>_facts
        "model_facts": raw.get("model_facts", cfg.get("model_facts")),
        "method_facts": raw.get("method_facts", cfg.get(f"{raw['variant']}_facts")), "ceilings": env.get("ceilings"),
        "compile": {"cells": len(compiled), "graphs_compiled": sum(c["graphs_compiled"] for c in compiled),
                    "inductor": compiled[0].get("inductor", "not recorded"),
                    "first_generations_s": round(sum(c["first_generation_s"] for c in compiled), 3),
                    # run dirs written before the graph cache was counted have no such record
                    "graph_cache": {k: sum(c["graph_cache"][k] for c in compiled) for k in ("hits", "misses")}
                    if all("graph_cache" in c for c in compiled) else None,
                    "cache_dir": (env.get("compile_cache") or {}).get("dir")}
                   if compiled else None,
        "cells": cells, "not_run": not_run, "decisions": decisions, "stopped": raw.get("stopped"),
        "interrupted": stop,
        "refused": raw.get("refused", []),
        "host": host_check(cells, (env.get("ceilings") or {}).get("launches_per_s"), raw.get("launches_per_s_end"),
                           on_gpu(raw))
                if any(c.get("suite") in suites.timed() for c in cells.values()) else None,
        "harness": harness(raw, cells),
        "paired": ({"baseline_run": cfg["baseline_run"], "cells": paired.with_run(cfg["baseline_run"], raw)}
                   if cfg.get("baseline_run") else None),
    }


SIGNALS = {"SIGTERM": "SIGTERM: a time limit (Slurm's) or a cancel", "SIGINT": "SIGINT: Ctrl-C"}


def interrupted_line(stop):
    """The banner of a run stopped by a signal: how far it got, and what stopped it."""
    why = SIGNALS.get(stop["signal"], stop["signal"])
    cell = f"; {stop['in_progress']} was in progress and is not recorded" if stop.get("in_progress") else ""
    return f"**INTERRUPTED after {stop['cells_done']} of {stop['cells']} cells** ({why}, at {stop['at_utc']}{cell})"


def _markdown(s):
    banner = [interrupted_line(s["interrupted"]), ""] if s.get("interrupted") else []
    lines = [f"# Run {s['run_id']}", "", *banner,
             f"- variant: **{s['variant']}**; model: `{s['model']}` ({s['weights']}); dtype {s['dtype']}; "
             f"device {s['device']} ({s['gpu'] or 'no GPU'}); torch {s['torch']}, transformers {s['transformers']}",
             f"- timer: {s['timer']}; profile {s['profile']}"
             + (f"; iterations {s['iterations']}" if s["iterations"] else "")]
    m = methods.load().get(s["variant"], methods.Method())   # a plug-in not loaded here: facts left unrendered
    if s["method_facts"] and m.headline(s["method_facts"]):
        lines.append(f"- {m.name}: {m.headline(s['method_facts'])}")
    if s["stopped"]:
        lines.append(f"- **STOPPED**: {s['stopped']}")
    lines += [f"- **WARNING**: the raw log refused a write (not strict JSON): {r}" for r in s.get("refused", [])]
    if s["weights"] == "synthetic weights":
        lines.append("- **synthetic weights**: timing only; no quality number comes from this run")
    ceil = s.get("ceilings") or {}
    if ceil and not on_gpu(s):
        lines.append("- on CPU the roofline (TFLOP/s, GB/s), the decode floors and the device busy share are not "
                     "shown: the host itself runs the operators, so they would mean nothing here")
    elif ceil:
        lines.append(f"- ceilings measured on this device at session start: copy {ceil['copy_GBps']} GB/s, "
                     f"matmul {ceil['gemm_TFLOPs']} TFLOP/s ({ceil['method']})")
    mf = s.get("model_facts") or {}
    if mf.get("layout"):
        lines.append(f"- module layout: {mf['layout']}; decode attention: {mf['decode_attention']}")
    if s.get("compile"):
        k = s["compile"]
        lines.append(f"- compiled decode: {k['graphs_compiled']} graphs compiled over {k['cells']} cells; "
                     f"compilation and CUDA-graph recording took {k['first_generations_s']} s in the "
                     f"untimed first generation of each cell; inductor settings {k['inductor']}"
                     + (f"; inductor's graph cache ({k['cache_dir']}): {k['graph_cache']['hits']} hits, "
                        f"{k['graph_cache']['misses']} misses" if k.get("graph_cache") else ""))
    if s.get("harness"):
        lines.append(harness_line(s["harness"]))
    lines += host_lines(s.get("host"), on_gpu(s))
    lines += energy_lines(s.get("energy"), s["cells"])
    for suite in SUITES.values():
        lines += suite.markdown(s, rows(s, suite.marker))
    if s.get("paired"):
        lines += _paired_markdown(s)
    if s["method_facts"]:
        lines += m.markdown(s["method_facts"])
    if s["decisions"]:
        lines += ["", "## Decisions", ""] + [f"- {d}" for d in s["decisions"]]
    return "\n".join(lines) + "\n"


def energy_lines(e, cells):
    if not e:
        return []
    if not e["available"]:
        return [f"- energy: {energy.NOT_AVAILABLE} ({e['reason']})"]
    lines = [f"- energy: the GPU's counter ({e['counter']}) around each cell's measured regions; power limit "
             f"{e['power_limit_w']:.0f} W at session start. Decode J/token: the steps' energy (generations less "
             "their prompts, from a probe) per generated token; mean W over the steps"]
    moved = {cid: c["energy"]["span"]["power_limit_w"] for cid, c in cells.items()
             if (c.get("energy") or {}).get("span") and len(set(c["energy"]["span"]["power_limit_w"])) > 1}
    lines += [f"- **WARNING**: the power limit changed during {cid} ({a:.0f} -> {b:.0f} W): its time and energy "
              "measure two machines" for cid, (a, b) in moved.items()]
    lines += [f"- energy {energy.NOT_AVAILABLE} in {cid}: {c['energy']['reason']}" for cid, c in cells.items()
              if c.get("energy") and not c["energy"]["available"]]
    return lines


def harness_line(h):
    p = h["parts_s"]
    return (f"- harness: measured regions {p['measured']:.1f} s of {h['wall_s']:.1f} s wall "
            f"(**{100 * h['efficiency']:.0f}%**); the rest: " + ", ".join(f"{k} {v:.1f} s" for k, v in p.items()
                                                                           if k != "measured"))


def host_lines(host, gpu):
    if not host:
        return []
    a, b = host["launches_per_s_start"], host["launches_per_s_end"]
    rate = (f"{a:.0f}/s at session start, " + (f"{b:.0f}/s at the end ({100 * host['change']:+.0f}%)" if b else
                                               "not measured at the end")) if a else "not measured"
    cells = ", ".join(host["host_bound_cells"]) or "none"
    bound = f"host-bound cells (device busy < {100 * HOST_BOUND:.0f}%): {cells}" if gpu else \
        "host-bound cells: not judged on CPU"
    lines = [f"- host: launch rate (one-element kernels) {rate}; {bound}"]
    return lines + [f"- **WARNING**: {w}" for w in host["warnings"]]


def _paired_markdown(s):
    lines = ["", f"## Paired comparison with baseline run {s['paired']['baseline_run']}", ""]
    for cid, p in s["paired"]["cells"].items():
        lines += SUITES[s["cells"][cid]["suite"]].paired_lines(cid, p, s["variant"])
    return lines


def summarize(run_dir):
    """Write summary.json, run_summary.md and plots/ for one run dir; returns the summary."""
    run_dir = Path(run_dir)
    s = build_summary(run_dir)
    raw_cells = load_raw(run_dir)["cells"]
    s["plots"] = [name for suite in SUITES.values() for name in suite.write(s, raw_cells, run_dir)]
    write_json(run_dir / "summary.json", s)
    (run_dir / "run_summary.md").write_text(_markdown(s))
    return s
