"""infer_sweep: prefill-only latency over (B, S) and greedy decode over (B, ctx, gen); the measuring code is
infer.py, imported when a cell runs."""
from gcompress_bench import UsageError
from gcompress_bench.fmt import fmt_mib
from gcompress_bench.results.stats import holds_one, ratio_interval
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import (
    MEM_COLS,
    STAT_COLS,
    breakdown_table,
    busy,
    compare_table,
    joules,
    latency_cols,
    latency_plot,
    missing,
    on_gpu,
    p50,
    roof,
    suite_ids,
    table,
    value,
)

DECODE_MODES = ("eager", "compiled")
TIMING = ("warmup", "iters", "trials")


def _tokens(c):
    return f"{c['tokens_per_s']:.1f}"


def _ms(x):
    return f"{x:.3f}"


def _more(v, key, fmt):
    """A column after a side's p50: a missing cell's reason is said once, in its p50 column."""
    return "—" if "missing" in v else value(v, key, fmt)


def _cold(c):
    """The untimed first generation at the cell's lengths: time to warm (compiling, per-length plans)."""
    step = (c.get("cold") or {}).get("step_p50_ms")
    return "n/a" if step is None else _ms(step)


def _speedup(r, label):
    """The speedup with its 95% interval, or "no measurable difference" where the interval holds 1.0."""
    if not r["speedup"][label]:
        return "missing"
    (lo, hi) = r["speedup_ci"][label]
    return (f"{r['speedup'][label]:.3f}x [{lo:.3f}, {hi:.3f}]" +
            (" no measurable difference" if holds_one((lo, hi)) else ""))


SPEEDUP = ("speedup = reference p50 / candidate p50, [its 95% bootstrap interval over trials and samples]; "
           "\"no measurable difference\" where the interval holds 1.0")


class Timing(Suite):
    job = "infer_sweep"
    timed = True
    device_facts = True

    @property
    def settings(self):
        return tuple(f"{self.marker}.{k}" for k in TIMING) + self.extra_settings + ("layout", "seed")

    extra_settings = ()

    def measure(self, cell, run, lm, clock, meter, **extra):
        from gcompress_bench.measure.cell import run_cell
        from gcompress_bench.suites import infer
        knobs = {k: run.cfg[self.marker][k] for k in TIMING}
        return run_cell(getattr(infer, self.marker), lm.device, lm=lm, clock=clock, meter=meter, seed=run.cfg["seed"],
                        ops_profile=run.cfg["ops_profile"], **cell.params, **knobs, **extra)

    def compare_rows(self, ref, cands, pairs):
        """Per cell: each side's headline distribution, rates, memory and energy; speedup = reference p50 /
        candidate p50, with its bootstrap interval."""
        rows = []
        for cid in suite_ids([ref, *cands], self.marker):
            row = {"cell": cid, "suite": self.marker, "values": {}, "speedup": {}, "speedup_ci": {},
                   "params": next(s["cells"][cid]["params"] for s in (ref, *cands) if cid in s["cells"])}
            for side in (ref, *cands):
                why, c = missing(side, cid), side["cells"].get(cid, {})
                row["values"][side["label"]] = {"missing": why} if why else {
                    **{k: c["stats_ms"][self.headline][k] for k in ("p50", "p90", "p99", "std")},
                    "tokens_per_s": c["tokens_per_s"], "ttft_ms": c.get("ttft_ms"), "roofline": c.get("roofline"),
                    "peak_allocated_bytes": c["memory"]["peak_allocated_bytes"],
                    "peak_reserved_bytes": c["memory"]["peak_reserved_bytes"], "kv_cache_bytes": c.get("kv_cache_bytes"),
                    "host_bound": c.get("host_bound"), "energy": c.get("energy")}
            base = row["values"][ref["label"]].get("p50")
            for side in cands:
                cand = row["values"][side["label"]].get("p50")
                row["speedup"][side["label"]] = base / cand if base and cand else None
                row["speedup_ci"][side["label"]] = ratio_interval(
                    ref["raw"][cid]["samples_ms"][self.headline],
                    side["raw"][cid]["samples_ms"][self.headline]) if base and cand else None
            rows.append(row)
        return rows

    def headline_items(self, rows, label):
        """The speedup's range over the cells, each end with its interval, and how many cells differ measurably."""
        got = [r for r in rows if r["speedup"].get(label)]
        if not got:
            return [f"- {self.marker} speed: no cell measured on both sides"]
        lo, hi = (f(got, key=lambda r: r["speedup"][label]) for f in (min, max))
        cis = [r["speedup_ci"][label] for r in got]
        faster, slower = sum(ci[0] > 1 for ci in cis), sum(ci[1] < 1 for ci in cis)
        span = f"{_speedup(lo, label)} ({lo['cell']})" + ("" if lo is hi else f" to {_speedup(hi, label)} ({hi['cell']})")
        if len(got) == 1:
            return [f"- {self.marker} speedup ({self.speed}): {span}"]
        return [f"- {self.marker} speedup ({self.speed}): {span}; of {len(got)} cells, {faster} measurably faster, "
                f"{slower} measurably slower, {len(got) - faster - slower} no measurable difference"]

    def compare_plots(self, rows, sides, out, model):
        """Each side's latency against the grid, and each candidate's speedup heatmap."""
        from gcompress_bench.results import plots
        series = {s["label"]: s["cells"] for s in sides}
        labels = [s["label"] for s in sides[1:]]
        row_key, col_key, col_text, (title, x, y) = self.heatmap
        length, split, length_label = self.lengths
        return [plots.save(getattr(plots, self.latency_figure)(series, model), out / self.latency_png),
                plots.save(plots.speedup_lines(rows, labels, length, f"{self.marker} speedup, {model}",
                                               length_label, split), out / f"{self.marker}_speedup_by_length.png"),
                plots.save(plots.speedup_heatmaps(
                    {label: {(r["params"][row_key], col_key(r["params"])):
                             (r["speedup"][label], r["speedup_ci"][label]) if r["speedup"][label] else None
                             for r in rows} for label in labels}, title, x, y, col_text),
                    out / f"{self.marker}_speedup.png")]


class Prefill(Timing):
    marker = "prefill"
    description = "one forward pass over B x S tokens"
    options = (("--prefill-batch", "prefill.batch", "ints", "prefill batch sizes, e.g. 1,4,8"),
               ("--prefill-seq-len", "prefill.seq_len", "ints", "prefill sequence lengths"))
    grid = ("batch", "seq_len")
    headline = "latency"
    joules = "joules_per_forward"

    def ids(self, g):
        return [(f"B{b}-S{s}", {"batch": b, "seq_len": s}) for b in g["batch"] for s in g["seq_len"]]

    def cost(self, p):
        return p["batch"] * p["seq_len"]

    def longest(self, g):
        return {"--prefill-seq-len": max(g["seq_len"])}

    def write(self, summary, raw_cells, run_dir):
        return latency_plot(self.marker, summary, run_dir, "prefill_latency", "prefill_latency.png")

    def derive(self, rec, stats):
        return {"tokens_per_s": rec["tokens"] / (stats["latency"]["p50"] / 1e3)}

    def against_ceilings(self, summary, ceilings):
        from gcompress_bench.measure import roofline
        return {"roofline": roofline.prefill_rate(summary, ceilings)}

    latency_figure, latency_png = "prefill_latency", "prefill_latency.png"
    speed = "latency p50"
    lengths = ("seq_len", (), "sequence length S (tokens)")   # a speedup's x axis, and what splits its panels
    heatmap = ("batch", lambda p: p["seq_len"], lambda s: f"S {s}", ("prefill speedup (p50)", "batch B",
                                                                      "sequence length S"))

    def compare_markdown(self, rows, ref, labels):
        return compare_table(f"prefill latency (ms; {SPEEDUP})",
                    ["cell", f"{ref} p50", "p99"] + [h for label in labels for h in (f"{label} p50", "p99", "speedup")],
                    [[r["cell"], p50(r["values"][ref], _ms), _more(r["values"][ref], "p99", _ms)] +
                     [x for label in labels for x in (p50(r["values"][label], _ms),
                                                      _more(r["values"][label], "p99", _ms), _speedup(r, label))]
                     for r in rows])

    def markdown(self, s, rows):
        gpu = [(lambda c: roof(c, "TFLOPs", "pct_of_gemm"), "TFLOP/s (% of matmul)"), (busy, "device busy")]
        extra = [(_tokens, "tokens/s"), *(gpu if on_gpu(s) else []), (lambda c: joules(c, "joules_per_forward"),
                                                                   "J/forward"), (lambda c: joules(c, "mean_power_w"),
                                                                                  "mean W")]
        return table("prefill (ms)", STAT_COLS + [h for _, h in extra] + MEM_COLS, rows,
                     lambda c: latency_cols(c, "latency", [f for f, _ in extra]))


def check_inductor(settings):
    """Each key a torch._inductor.config setting, each value of the setting's own type."""
    if not isinstance(settings, dict):
        raise UsageError(f"--inductor: {settings!r} is not allowed; allowed: key=value settings")
    if not settings:
        return   # nothing to check: leave inductor (a second's import) to the runs that compile
    from torch._inductor import config as inductor
    for key, setting in settings.items():
        try:
            current = getattr(inductor, key) if "." not in key else inductor.get_config_copy()[key]
        except (AttributeError, KeyError):
            raise UsageError(f"--inductor: {key!r} is not a torch._inductor.config setting; allowed: its "
                             "settings, e.g. coordinate_descent_tuning, max_autotune, epilogue_fusion") from None
        if current is not None and type(setting) is not type(current):
            raise UsageError(f"--inductor: {key}={setting!r} is not allowed; allowed: a {type(current).__name__}, "
                             f"e.g. {key}={current!r}")


class Decode(Timing):
    marker = "decode"
    description = "greedy decode: a ctx-token prompt, then gen tokens"
    options = (("--decode-ctx", "decode.ctx", "ints", "decode prompt lengths"),
               ("--decode-gen", "decode.gen", "ints", "decode generated tokens"),
               ("--decode-batch", "decode.batch", "ints", "decode batch sizes"),
               ("--decode-mode", "decode.mode", "strs", "decode modes, each its own cells: eager (DynamicCache, plain "
                                                        "forwards), compiled (StaticCache + torch.compile CUDA graphs)"),
               ("--inductor", "decode.inductor", "settings", "compiled decode: torch._inductor.config settings, e.g. "
                                                             "coordinate_descent_tuning=true,max_autotune=false"))
    grid = ("ctx", "gen", "batch")
    headline = "step"
    measured = "total"       # whole generations: prompt and steps
    joules = "joules_per_token"
    extra_settings = ("decode.mode", "decode.inductor")

    def ids(self, g):
        # eager cells keep their plain ids, so runs from before the decode modes still compare
        return [(f"B{b}-ctx{c}-gen{n}" + ("" if m == "eager" else f"-{m}"),
                 {"batch": b, "ctx": c, "gen": n, "mode": m})
                for m in g["mode"] for b in g["batch"] for c in g["ctx"] for n in g["gen"]]

    def cost(self, p):
        """A decode step is launch-bound: it weighs like a fixed-size forward per token."""
        launch = 256 if p.get("mode", "eager") == "eager" else 64
        return p["gen"] * (launch + p["batch"] * p["ctx"] // 8)

    def validate(self, g):
        super().validate(g)
        check_inductor(g.get("inductor", {}))
        modes = g.get("mode")
        if not modes or any(m not in DECODE_MODES for m in modes):
            raise UsageError(f"--decode-mode: {modes} is not allowed; allowed: one or more of {', '.join(DECODE_MODES)}")

    def longest(self, g):
        return {"--decode-ctx + --decode-gen": max(g["ctx"]) + max(g["gen"])}

    def write(self, summary, raw_cells, run_dir):
        return latency_plot(self.marker, summary, run_dir, "decode_latency", "decode_ms_per_token.png")

    def prepare(self, cfg, spec, tokenizer, device):
        if "compiled" in cfg["decode"]["mode"] and device.type != "cuda":
            raise UsageError(f"--decode-mode compiled needs a CUDA device (it replays CUDA graphs); this run's "
                             f"device is {device.type}; allowed here: --decode-mode eager")

    def measure(self, cell, run, lm, clock, meter):
        return super().measure(cell, run, lm, clock, meter, inductor=run.cfg["decode"]["inductor"])

    def derive(self, rec, stats):
        step = stats["step"]["p50"]
        return {"ms_per_token": step, "tokens_per_s": rec["params"]["batch"] / (step / 1e3),
                "ttft_ms": stats["ttft"]["p50"]}

    def against_ceilings(self, summary, ceilings):
        from gcompress_bench.measure import roofline
        return {"roofline": roofline.decode_rate(summary, ceilings),
                "roofline_breakdown": roofline.decode_breakdown(summary, ceilings)}

    latency_figure, latency_png = "decode_latency", "decode_ms_per_token.png"
    speed = "ms/token p50"
    lengths = ("ctx", ("gen", "mode"), "context length (tokens)")
    heatmap = ("batch", lambda p: (p["ctx"], p["gen"], p.get("mode", "eager")),
               lambda k: f"ctx {k[0]} · gen {k[1]} · {k[2]}",
               ("decode speedup (ms/token p50)", "batch B", "(ctx, gen, mode)"))

    def compare_markdown(self, rows, ref, labels):
        def gbps(v):
            return f"{v['roofline']['GBps']:.0f}" if v.get("roofline") else "n/a"

        def cols(v):
            return [p50(v, _ms), _more(v, "p99", _ms), _more(v, "tokens_per_s", "{:.1f}".format),
                    _more(v, "ttft_ms", _ms), "—" if "missing" in v else gbps(v)]
        return compare_table(f"decode (ms/token p50, p99, tokens/s, time to first token ms, GB/s; {SPEEDUP})",
                    ["cell", f"{ref} p50", "p99", "tok/s", "TTFT", "GB/s"] +
                    [h for label in labels for h in (f"{label} p50", "p99", "tok/s", "TTFT", "GB/s", "speedup")],
                    [[r["cell"], *cols(r["values"][ref])] +
                     [x for label in labels for x in (*cols(r["values"][label]), _speedup(r, label))] for r in rows])

    def markdown(self, s, rows):
        gpu = [(lambda c: roof(c, "GBps", "pct_of_copy"), "GB/s (% of copy)"), (busy, "device busy")]
        extra = [(_tokens, "tokens/s"), (lambda c: f"{c['ttft_ms']:.3f}", "TTFT p50 ms"),
                 (lambda c: fmt_mib(c.get("kv_cache_bytes")), "KV cache MiB"), *(gpu if on_gpu(s) else []),
                 (lambda c: f"{c['host_stats_ms']['step']['p50']:.3f}" if "host_stats_ms" in c else "n/a",
                  "host ms/step p50"),
                 (_cold, "first generation ms/step p50"),
                 (lambda c: joules(c, "joules_per_token"), "J/token"), (lambda c: joules(c, "mean_power_w"), "mean W")]
        return table("decode (ms/token)", STAT_COLS + [h for _, h in extra] + MEM_COLS, rows,
                     lambda c: latency_cols(c, "step", [f for f, _ in extra])) + \
            (breakdown_table(rows) if on_gpu(s) else [])


register(Prefill())
register(Decode())
