"""Per-run summary: summary.json, run_summary.md and plots/, always regenerated from raw.json."""
import re
from pathlib import Path

from . import dims, method, paired, plots, roofline, stats
from .results import ResultsError, read_json, write_json
from .suites import SUITES, TIMED

# per-item data a summary replaces with statistics (or leaves in raw.json): every other field of a
# cell's record reaches summary.json as it is
RAW_ONLY = ("samples_ms", "items", "window_starts")


def _cell_summary(rec, ceilings):
    out = {k: v for k, v in rec.items() if k not in RAW_ONLY}
    if rec.get("status") != "ok" or "samples_ms" not in rec:
        return out
    out["stats_ms"] = {name: stats.describe(trials) for name, trials in rec["samples_ms"].items()}
    out.update(SUITES[rec["suite"]].derive(rec, out["stats_ms"]))
    out["roofline"] = roofline.achieved(rec["suite"], out, ceilings)
    return out


RAW_HEADER = ("run_id", "variant", "model", "timer", "cells")


def build_summary(run_dir):
    """The summary of one run dir; a malformed one raises ResultsError naming the file, never a KeyError."""
    run_dir = Path(run_dir)
    raw = read_json(run_dir / "raw.json")
    missing = [k for k in RAW_HEADER if k not in raw] if isinstance(raw, dict) else list(RAW_HEADER)
    if missing or not isinstance(raw["cells"], dict):
        raise ResultsError(f"{run_dir / 'raw.json'}: lacks {missing or ['a cells mapping']}; not a complete "
                           "gcompress-bench raw file")
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
    decisions += [f"{cid}: not run ({raw.get('stopped') or 'interrupted or deselected after start'})"
                  for cid in not_run]
    return {
        "run_id": raw["run_id"], "variant": raw["variant"], "model": raw["model"], "updated_utc": raw.get("updated_utc"),
        "weights": "synthetic weights" if raw.get("synthetic_weights") else "pretrained",
        "timer": raw["timer"], "profile": cfg.get("profile"), "dtype": cfg.get("dtype"),
        "device": cfg.get("device_resolved"), "gpu": env.get("gpu"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "suites": cfg.get("suites"),
        "iterations": ({m: {k: cfg[m][k] for k in ("warmup", "iters", "trials")} for m in TIMED
                        if SUITES[m].job in cfg.get("suites", ["infer_sweep"])} or None),
        "label": method.label(cfg) if cfg.get("variant") in method.load() else raw["variant"],
        # measured facts live in raw.json; run dirs written before kept them in config.json as <method>_facts
        "model_facts": raw.get("model_facts", cfg.get("model_facts")),
        "method_facts": raw.get("method_facts", cfg.get(f"{raw['variant']}_facts")), "ceilings": env.get("ceilings"),
        "compile": {"cells": len(compiled), "graphs_compiled": sum(c["graphs_compiled"] for c in compiled),
                    "first_generations_s": round(sum(c["first_generation_s"] for c in compiled), 3)}
                   if compiled else None,
        "cells": cells, "not_run": not_run, "decisions": decisions, "stopped": raw.get("stopped"),
        "paired": ({"baseline_run": cfg["baseline_run"], "cells": paired.with_run(cfg["baseline_run"], raw)}
                   if cfg.get("baseline_run") else None),
    }


def fmt_mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def _table(title, columns, rows, render):
    """A markdown table of cells; `render` gets every cell, ok or not (an OOM cell still has memory)."""
    if not rows:
        return []
    out = ["", f"## {title}", "", "| cell | status | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for cid, c in rows:
        status = "ok" if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"
        out.append(f"| {cid} | {status} | " + " | ".join(render(c)) + " |")
    return out


def _rows(s, suite):
    return [(c, v) for c, v in s["cells"].items() if v.get("suite") == suite]


def _latency_cols(c, metric, extra):
    mem = c.get("memory", {})
    tail = [fmt_mib(mem.get("peak_allocated_bytes")), fmt_mib(mem.get("peak_reserved_bytes"))]
    if c["status"] != "ok":
        return ["—"] * (5 + len(extra)) + tail
    st = c["stats_ms"][metric]
    return [f"{st[k]:.3f}" for k in ("p50", "p90", "p99", "std", "cv")] + [f(c) for f in extra] + tail


def _roof(c, rate, pct):
    r = c.get("roofline")
    if not r:
        return "n/a"
    return f"{r[rate]:.4g}" + (f" ({r[pct]:.0f}%)" if r[pct] is not None else "")


def _dash_unless_ok(n, render):
    return lambda c: render(c) if c["status"] == "ok" else ["—"] * n


def _markdown(s, dims_table=None):
    lines = [f"# Run {s['run_id']}", "",
             f"- variant: **{s['variant']}**; model: `{s['model']}` ({s['weights']}); dtype {s['dtype']}; "
             f"device {s['device']} ({s['gpu'] or 'no GPU'}); torch {s['torch']}, transformers {s['transformers']}",
             f"- timer: {s['timer']}; profile {s['profile']}"
             + (f"; iterations {s['iterations']}" if s["iterations"] else "")]
    m = method.load().get(s["variant"], method.Method())   # a plug-in not loaded here: facts left unrendered
    if s["method_facts"] and m.headline(s["method_facts"]):
        lines.append(f"- {m.name}: {m.headline(s['method_facts'])}")
    if s["stopped"]:
        lines.append(f"- **STOPPED**: {s['stopped']}")
    if s["weights"] == "synthetic weights":
        lines.append("- **synthetic weights**: timing only; no quality number comes from this run")
    stat_cols = ["p50", "p90", "p99", "std", "cv"]
    mem_cols = ["peak alloc MiB", "peak reserved MiB"]
    tokens = [lambda c: f"{c['tokens_per_s']:.1f}"]
    prefill_extra = tokens + [lambda c: _roof(c, "TFLOPs", "pct_of_gemm")]
    decode_extra = tokens + [lambda c: f"{c['ttft_ms']:.3f}", lambda c: fmt_mib(c.get("kv_cache_bytes")),
                             lambda c: _roof(c, "GBps", "pct_of_copy")]
    ceil = s.get("ceilings") or {}
    if ceil:
        lines.append(f"- ceilings measured on this device at session start: copy {ceil['copy_GBps']} GB/s, "
                     f"matmul {ceil['gemm_TFLOPs']} TFLOP/s ({ceil['method']})")
    if s.get("compile"):
        k = s["compile"]
        lines.append(f"- compiled decode: {k['graphs_compiled']} graphs compiled over {k['cells']} cells; "
                     f"compilation and CUDA-graph recording took {k['first_generations_s']} s in the "
                     "untimed first generation of each cell")
    lines += _table("prefill (ms)", stat_cols + ["tokens/s", "TFLOP/s (% of matmul)"] + mem_cols, _rows(s, "prefill"),
                    lambda c: _latency_cols(c, "latency", prefill_extra))
    lines += _table("decode (ms/token)", stat_cols + ["tokens/s", "TTFT p50 ms", "KV cache MiB", "GB/s (% of copy)"]
                    + mem_cols, _rows(s, "decode"), lambda c: _latency_cols(c, "step", decode_extra))
    lines += _table("ppl", ["perplexity", "mean NLL", "tokens", "windows", "dataset", "sha256", "s"], _rows(s, "ppl"),
                    _dash_unless_ok(7, lambda c: [f"{c['ppl']:.4f}", f"{c['nll']:.4f}", str(c["tokens"]),
                                                  str(c["windows"]), c["dataset"], c["sha256"][:12],
                                                  f"{c['seconds']:.1f}"]))
    lines += _table("lmeval", ["acc ± stderr", "acc_norm ± stderr", "n of available", "shots", "data",
                               "docs sha256", "s"], _rows(s, "lmeval"),
                    _dash_unless_ok(7, lambda c: [plus_minus(c["acc"], c["acc_stderr"]),
                                                  plus_minus(c["acc_norm"], c["acc_norm_stderr"]),
                                                  f"{c['n']} of {c.get('n_available', '?')}", str(c["fewshot"]),
                                                  _data_source(c), c.get("data", {}).get("docs_sha256", "—")[:12],
                                                  f"{c['seconds']:.1f}"]))
    lines += _dims_markdown(dims_table)
    if s.get("paired"):
        lines += _paired_markdown(s["paired"], s["variant"])
    if s["method_facts"]:
        lines += m.markdown(s["method_facts"])
    if s["decisions"]:
        lines += ["", "## Decisions", ""] + [f"- {d}" for d in s["decisions"]]
    return "\n".join(lines) + "\n"


def num(value, digits=4):
    """A number as a report shows it; a non-finite one is stored as null."""
    return "not finite" if value is None else f"{value:.{digits}f}"


def plus_minus(value, stderr, digits=4):
    """value ± stderr; lm-eval gives no stderr for a single item."""
    return f"{value:.{digits}f} ± " + (f"{stderr:.{digits}f}" if stderr is not None else "n/a")


def _data_source(c):
    return c["source"] + (f", {c['split']} split" if c.get("split") else "")


def _paired_markdown(paired, name):
    lines = ["", f"## Paired comparison with baseline run {paired['baseline_run']}", ""]
    for cid, p in paired["cells"].items():
        if "ppl_ratio" in p:
            lines.append(f"- {cid}: perplexity {p['ppl']:.4f} vs {p['ppl_reference']:.4f}, ratio "
                         f"{p['ppl_ratio']:.4f} (same windows: {p['same_windows']})")
            continue
        for m in ("acc", "acc_norm"):
            q = p[m]
            lines.append(f"- {cid} {m}: {name} {q['candidate']:.4f} vs baseline {q['reference']:.4f} "
                         f"(diff {q['diff']:+.4f} over {p['n_paired']} paired items; only baseline right "
                         f"{q['only_reference_right']}, only {name} right {q['only_candidate_right']}; exact McNemar "
                         f"p = {q['mcnemar_p']:.4f})")
    return lines


def _plots(s, out, dims_table=None):
    """Latency plots of the timing cells; a quality-only run has none, and no plots/ folder."""
    series = {s["variant"]: s["cells"]}
    made = []
    for suite, plot, name in (("prefill", plots.prefill_latency, "prefill_latency.png"),
                              ("decode", plots.decode_latency, "decode_ms_per_token.png")):
        if any(c["suite"] == suite and c["status"] == "ok" for c in s["cells"].values()):
            out.mkdir(exist_ok=True)
            made.append(plots.save(plot(series, s["model"]), out / name))
    for op in dict.fromkeys(x["op"] for x in (dims_table or {}).get("series", [])):
        out.mkdir(exist_ok=True)
        fig = plots.dims_latency([x for x in dims_table["series"] if x["op"] == op],
                                 f"{op}, {dims_table['device_name']}, {dims_table['dtype']} (p50)")
        made.append(plots.save(fig, out / f"dims_{op}.png"))
    return made


def _dims_markdown(table):
    """Per sweep series: p50 at every value, its alignment, and the cliffs (neighbours > 10% apart)."""
    if not table:
        return []
    lines = ["", "## dims (p50 ms per value of the swept dim)", "",
             f"Measured on {table['device_name']}, {table['dtype']}; table: {dims.TABLE_FILE}. aligned: the largest "
             "of 8/16/32/64 dividing the value. A cliff: neighbours whose p50 differ by more than 10%."]
    for x in table["series"]:
        at = ", ".join(f"{k}={x[k]}" for k in ("M", "batch", "seq") if k in x)
        fixed = ", ".join(f"{k}={v}" for k, v in x["shape"].items())
        lines += ["", f"### {x['op']} over {x['sweep']} ({fixed}; {at})", "",
                  f"| {x['sweep']} | aligned | p50 | p99 | top kernel |", "|---|---|---|---|---|"]
        lines += [f"| {p['value']} | {dims.alignment(p['value']) or ''} | {num(p['p50_ms'])} | {num(p['p99_ms'])} | "
                  f"{_kernel_short(p['kernels'][0]) if p['kernels'] else ''} |" for p in x["points"]]
        found = dims.cliffs(x["points"])
        lines += ["", f"Cliffs: {len(found) or 'none'}"]
        lines += [f"- {c['from']} -> {c['to']}: p50 x{c['ratio']:.3f}; {_kernel_change(c)}" for c in found]
    return lines


def _kernel_change(cliff):
    before, after = set(cliff["kernels_from"]), set(cliff["kernels_to"])
    if before == after:
        return "same kernels"
    return "kernels dropped: " + "; added: ".join(", ".join(sorted({_kernel_short(k) for k in ks})) or "none"
                                                  for ks in (before - after, after - before))


def _kernel_short(name):
    """A kernel as a line can hold it: a long templated name by its longest identifier (cutlass_80_..._align2,
    nvjet_sm90_..., cudnn_..._sdpa_...), which is the part that tells kernels apart."""
    return name if len(name) <= 40 else max(re.findall(r"[A-Za-z_]\w*", name), key=len)


def summarize(run_dir):
    """Write summary.json, run_summary.md and plots/ for one run dir; returns the summary."""
    run_dir = Path(run_dir)
    s = build_summary(run_dir)
    table = dims.table(s)
    if table:
        write_json(run_dir / dims.TABLE_FILE, table)
    s["plots"] = _plots(s, run_dir / "plots", table)
    write_json(run_dir / "summary.json", s)
    (run_dir / "run_summary.md").write_text(_markdown(s, table))
    return s
