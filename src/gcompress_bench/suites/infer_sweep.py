"""infer_sweep: prefill-only latency over (B, S) and greedy decode over (B, ctx, gen); the measuring code is
infer.py, imported when a cell runs."""
from gcompress_bench import UsageError
from gcompress_bench.fmt import fmt_mib
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import (
    MEM_COLS,
    STAT_COLS,
    breakdown_table,
    busy,
    joules,
    latency_cols,
    latency_plot,
    roof,
    table,
)

DECODE_MODES = ("eager", "compiled")
TIMING = ("warmup", "iters", "trials")


def _tokens(c):
    return f"{c['tokens_per_s']:.1f}"


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

    def markdown(self, s, rows):
        extra = [_tokens, lambda c: roof(c, "TFLOPs", "pct_of_gemm"), busy, lambda c: joules(c, "joules_per_forward"),
                 lambda c: joules(c, "mean_power_w")]
        return table("prefill (ms)", STAT_COLS + ["tokens/s", "TFLOP/s (% of matmul)", "device busy", "J/forward",
                                                 "mean W"] + MEM_COLS, rows, lambda c: latency_cols(c, "latency", extra))


def check_inductor(settings):
    """Each key a torch._inductor.config setting, each value of the setting's own type."""
    from torch._inductor import config as inductor
    if not isinstance(settings, dict):
        raise UsageError(f"--inductor: {settings!r} is not allowed; allowed: key=value settings")
    for key, value in settings.items():
        try:
            current = getattr(inductor, key) if "." not in key else inductor.get_config_copy()[key]
        except (AttributeError, KeyError):
            raise UsageError(f"--inductor: {key!r} is not a torch._inductor.config setting; allowed: its "
                             "settings, e.g. coordinate_descent_tuning, max_autotune, epilogue_fusion") from None
        if current is not None and type(value) is not type(current):
            raise UsageError(f"--inductor: {key}={value!r} is not allowed; allowed: a {type(current).__name__}, "
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

    def markdown(self, s, rows):
        extra = [_tokens, lambda c: f"{c['ttft_ms']:.3f}", lambda c: fmt_mib(c.get("kv_cache_bytes")),
                 lambda c: roof(c, "GBps", "pct_of_copy"), busy,
                 lambda c: f"{c['host_stats_ms']['step']['p50']:.3f}" if "host_stats_ms" in c else "n/a",
                 lambda c: joules(c, "joules_per_token"), lambda c: joules(c, "mean_power_w")]
        return table("decode (ms/token)", STAT_COLS + ["tokens/s", "TTFT p50 ms", "KV cache MiB", "GB/s (% of copy)",
                                                      "device busy", "host ms/step p50", "J/token", "mean W"]
                     + MEM_COLS, rows, lambda c: latency_cols(c, "step", extra)) + breakdown_table(rows)


register(Prefill())
register(Decode())
