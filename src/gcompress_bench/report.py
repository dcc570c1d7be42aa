"""Per-run summary: summary.json, run_summary.md and plots/, always regenerated from raw.json."""
from pathlib import Path

from . import paired, plots, roofline, stats
from .palu import headline
from .results import ResultsError, read_json, write_json

QUALITY_KEYS = ("ppl", "nll", "tokens", "windows", "dataset", "sha256", "seq_len", "stride", "seconds", "task",
                "source", "fewshot", "limit", "n", "n_available", "split", "data", "acc", "acc_stderr", "acc_norm",
                "acc_norm_stderr", "lm_eval")

def _cell_summary(rec, ceilings):
    out = {k: rec[k] for k in ("suite", "params", "status") if k in rec}
    out.update({k: rec[k] for k in ("reason", "error", "memory", "kv_cache_bytes", "tokens", "flops",
                                    "compile", "warmup_s", "kv_bytes_per_position", "bytes_per_step") if k in rec})
    if rec.get("suite") in ("ppl", "lmeval"):
        out.update({k: rec[k] for k in QUALITY_KEYS if k in rec})
    if rec.get("status") != "ok" or "samples_ms" not in rec:
        return out
    out["stats_ms"] = {name: stats.describe(trials) for name, trials in rec["samples_ms"].items()}
    p = rec["params"]
    if rec["suite"] == "prefill":
        out["tokens_per_s"] = rec["tokens"] / (out["stats_ms"]["latency"]["p50"] / 1e3)
    elif rec["suite"] == "decode":
        out["ms_per_token"] = out["stats_ms"]["step"]["p50"]
        out["tokens_per_s"] = p["batch"] / (out["ms_per_token"] / 1e3)
        out["ttft_ms"] = out["stats_ms"]["ttft"]["p50"]
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
    decisions += [f"{cid}: not run ({cfg.get('stopped') or 'interrupted or deselected after start'})"
                  for cid in not_run]
    return {
        "run_id": raw["run_id"], "variant": raw["variant"], "model": raw["model"], "updated_utc": raw.get("updated_utc"),
        "weights": "synthetic weights" if raw.get("synthetic_weights") else "pretrained",
        "timer": raw["timer"], "profile": cfg.get("profile"), "dtype": cfg.get("dtype"),
        "device": cfg.get("device_resolved"), "gpu": env.get("gpu"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "suites": cfg.get("suites"),
        "iterations": ({s: {k: cfg[s][k] for k in ("warmup", "iters", "trials")} for s in ("prefill", "decode")}
                       if "infer_sweep" in cfg.get("suites", ["infer_sweep"]) else None),
        "model_facts": cfg.get("model_facts"), "palu": cfg.get("palu_facts"), "ceilings": env.get("ceilings"),
        "compile": {"cells": len(compiled), "graphs_compiled": sum(c["graphs_compiled"] for c in compiled),
                    "first_generations_s": round(sum(c["first_generation_s"] for c in compiled), 3)}
                   if compiled else None,
        "cells": cells, "not_run": not_run, "decisions": decisions, "stopped": cfg.get("stopped"),
        "paired": ({"baseline_run": cfg["baseline_run"], "cells": paired.with_run(cfg["baseline_run"], raw)}
                   if cfg.get("baseline_run") else None),
    }


def _fmt_bytes(n):
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


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
    tail = [_fmt_bytes(mem.get("peak_allocated_bytes")), _fmt_bytes(mem.get("peak_reserved_bytes"))]
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


def _markdown(s):
    lines = [f"# Run {s['run_id']}", "",
             f"- variant: **{s['variant']}**; model: `{s['model']}` ({s['weights']}); dtype {s['dtype']}; "
             f"device {s['device']} ({s['gpu'] or 'no GPU'}); torch {s['torch']}, transformers {s['transformers']}",
             f"- timer: {s['timer']}; profile {s['profile']}"
             + (f"; iterations {s['iterations']}" if s["iterations"] else "")]
    if s["palu"]:
        lines.append(f"- PaLU: {headline(s['palu'])}")
    if s["stopped"]:
        lines.append(f"- **STOPPED**: {s['stopped']}")
    if s["weights"] == "synthetic weights":
        lines.append("- **synthetic weights**: timing only; no quality number comes from this run")
    stat_cols = ["p50", "p90", "p99", "std", "cv"]
    mem_cols = ["peak alloc", "peak reserved"]
    tokens = [lambda c: f"{c['tokens_per_s']:.1f}"]
    prefill_extra = tokens + [lambda c: _roof(c, "TFLOPs", "pct_of_gemm")]
    decode_extra = tokens + [lambda c: f"{c['ttft_ms']:.3f}", lambda c: _fmt_bytes(c.get("kv_cache_bytes")),
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
    lines += _table("decode (ms/token)", stat_cols + ["tokens/s", "TTFT p50 ms", "KV cache", "GB/s (% of copy)"]
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
    if s.get("paired"):
        lines += _paired_markdown(s["paired"])
    if s["palu"]:
        lines += _palu_markdown(s["palu"])
    if s["decisions"]:
        lines += ["", "## Decisions", ""] + [f"- {d}" for d in s["decisions"]]
    return "\n".join(lines) + "\n"


def _num(value, digits=4):
    return "not finite" if value is None else f"{value:.{digits}f}"


def plus_minus(value, stderr, digits=4):
    """value ± stderr; lm-eval gives no stderr for a single item."""
    return f"{value:.{digits}f} ± " + (f"{stderr:.{digits}f}" if stderr is not None else "n/a")


def _data_source(c):
    return c["source"] + (f", {c['split']} split" if c.get("split") else "")


def _paired_markdown(paired):
    lines = ["", f"## Paired comparison with baseline run {paired['baseline_run']}", ""]
    for cid, p in paired["cells"].items():
        if "ppl_ratio" in p:
            lines.append(f"- {cid}: perplexity {p['ppl']:.4f} vs {p['ppl_baseline']:.4f}, ratio "
                         f"{p['ppl_ratio']:.4f} (same windows: {p['same_windows']})")
            continue
        for m in ("acc", "acc_norm"):
            q = p[m]
            lines.append(f"- {cid} {m}: palu {q['palu']:.4f} vs baseline {q['baseline']:.4f} "
                         f"(diff {q['diff']:+.4f} over {p['n_paired']} paired items; only baseline right "
                         f"{q['only_baseline_right']}, only palu right {q['only_palu_right']}; exact McNemar "
                         f"p = {q['mcnemar_p']:.4f})")
    return lines


def _palu_markdown(p):
    v = p["verification"]
    calib = p["calibration"] or {}
    errs = [e for m in p["modules"].values() for e in (m["activation_rel_err"] or m["weight_rel_err"])]
    finite = [e for e in errs if e is not None]   # a non-finite number is stored as null
    kind = "activation-weighted" if p["svd"] == "whiten" else "weight"
    ranks = sorted({r for m in p["modules"].values() for r in m["logical"]})
    phys = sorted({r for m in p["modules"].values() for r in m["physical"]})
    return ["", "## PaLU compression", "",
            f"- ratio {p['ratio']}, group size {p['group_size']} ({p['groups_per_module']} groups/module, "
            f"full rank {p['group_full_rank']}), SVD {p['svd']}, rounding {p['rounding']}, align {p['align']}",
            f"- {headline(p)}",
            f"- ranks from: {p['rank_info'].get('chosen') or p['rank_info'].get('path') or p['rank_info']['source']}; "
            f"factors {p.get('factors', 'recomputed')}",
            f"- logical ranks {ranks}, physical ranks {phys}; aligned share (physical) {p['aligned_share']}",
            f"- KV compression 1 - sum(r)/sum(gs*head_dim): logical {p['kv_compression_logical']:.4f}, "
            f"physical {p['kv_compression_physical']:.4f}; latent values/token {p['latent_values_per_token']} "
            f"vs {p['kv_values_per_token_baseline']} K+V values/token in the baseline",
            f"- factor params {p['factor_params']:,} vs original {p['original_params']:,} "
            f"({p['factor_param_ratio']:.3f}x)",
            f"- calibration: {calib.get('source', 'none (plain SVD)')}, {calib.get('windows', '-')} x "
            f"{calib.get('seq_len', '-')} tokens, sha256 {calib.get('sha256')}, cache hit {calib.get('cache_hit')}",
            f"- {kind} relative error per group: mean {_num(sum(finite) / len(finite) if finite else None)}, max "
            f"{_num(max(finite, default=None))}" + (f" ({len(errs) - len(finite)} not finite)" if finite != errs else ""),
            f"- verification on {v['probe_tokens']} probe tokens: max |logit diff| {_num(v['max_abs_logit_diff'])}, "
            f"mean {_num(v['mean_abs_logit_diff'])}, top-1 agreement {_num(v['top1_agreement'], 3)}",
            f"- greedy generation after compression: {v['generation']!r}",
            f"- compression took {p['compress_s']} s",
            f"- KV cache: the latents (physical ranks): {1 - p['kv_compression_physical']:.4f} of the baseline's "
            "K/V bytes; K rebuilt with RoPE at attention, V folded into o_proj" if p.get("cache") == "latent" else
            "- KV cache: this path keeps full reconstructed K and V in the cache (PaLU's HF path): "
            "no KV memory is saved here"]


def _plots(s, out):
    """Latency plots of the timing cells; a quality-only run has none, and no plots/ folder."""
    series = {s["variant"]: s["cells"]}
    made = []
    for suite, plot, name in (("prefill", plots.prefill_latency, "prefill_latency.png"),
                              ("decode", plots.decode_latency, "decode_ms_per_token.png")):
        if any(c["suite"] == suite and c["status"] == "ok" for c in s["cells"].values()):
            out.mkdir(exist_ok=True)
            made.append(plots.save(plot(series, s["model"]), out / name))
    return made


def summarize(run_dir):
    """Write summary.json, run_summary.md and plots/ for one run dir; returns the summary."""
    run_dir = Path(run_dir)
    s = build_summary(run_dir)
    s["plots"] = _plots(s, run_dir / "plots")
    write_json(run_dir / "summary.json", s)
    (run_dir / "run_summary.md").write_text(_markdown(s))
    return s
