"""Dimension sweeps: one operator at a model's real shapes, one of its dims stepped through every value of a
range, so the latency cliffs that irregular dims cause (cuBLAS picking other kernels when K is not a
multiple of 8, SDPA leaving its flash kernel when the head dim is not) show up as steps between neighbours.

Operators, each timed as a model runs it:
    lowrank  x (M x d_in) -> d_in x r -> r x d_out, two F.linear calls (a PaLU/ASVD factored linear); sweeps r
    gemm     x (M x k) @ W (k x n), one F.linear (an MLP projection); sweeps n or k
    sdpa     causal scaled_dot_product_attention, q (batch, heads, seq, head_dim), k/v with kv_heads; sweeps head_dim
A dim the YAML entry does not give is the model's (d_in, k, n = hidden; d_out = kv_heads x head_dim;
heads, kv_heads), so the sweep times the shapes the model's own layers have.

The run's table (dims_table.json) is keyed by the GPU that measured it: a cliff is a property of one
device's kernels, so a table is never applied on another device.
"""
import json
import re

from gcompress_bench import UsageError, dimtable
from gcompress_bench.dimtable import OPS, device_name
from gcompress_bench.fmt import num
from gcompress_bench.models import head_dim
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import save_plot

ID_TAG = {"d_in": "din", "d_out": "dout", "k": "k", "n": "n", "r": "r", "heads": "h", "kv_heads": "kv",
          "head_dim": "hd", "M": "M", "seq": "S", "batch": "B"}


def _fixed(op, sweep):
    """The dims an entry may give as one integer: the operator's own, less the swept one."""
    return tuple(d for d in OPS[op].dims if d not in OPS[op].loops and d != sweep)


# ---------------------------------------------------------------- the grid

def check_grid(section):
    """The YAML `dims:` section, checked before anything runs: one UsageError line naming the bad value."""
    entries = section.get("ops") if isinstance(section, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"dims.ops: {entries!r} is not allowed; allowed: a list of one or more operator entries")
    seen = {}
    for i, e in enumerate(entries):
        where = f"dims.ops[{i}]"
        if not isinstance(e, dict):
            raise UsageError(f"{where}: {e!r} is not allowed; allowed: a mapping with op, sweep, range and its sizes")
        op = e.get("op")
        if op not in OPS:
            raise UsageError(f"{where}.op: unknown value {op!r}; allowed: {', '.join(OPS)}")
        sweep = e.get("sweep")
        if sweep not in OPS[op].sweeps:
            raise UsageError(f"{where}.sweep: unknown value {sweep!r} for {op}; allowed: {', '.join(OPS[op].sweeps)}")
        allowed = ("op", "sweep", "range") + OPS[op].loops + _fixed(op, sweep)
        unknown = [k for k in e if k not in allowed]
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r} for {op} sweeping {sweep}; "
                             f"allowed: {', '.join(allowed)}")
        rng = e.get("range")
        if not (isinstance(rng, list) and len(rng) == 3 and all(_positive(v) for v in rng) and rng[0] <= rng[1]):
            raise UsageError(f"{where}.range: {rng!r} is not allowed; allowed: [lo, hi, step], integers with "
                             "1 <= lo <= hi and step >= 1 (hi included)")
        for key in OPS[op].loops:
            vals = e.get(key)
            if not (isinstance(vals, list) and vals and all(map(_positive, vals)) and len(set(vals)) == len(vals)):
                raise UsageError(f"{where}.{key}: {vals!r} is not allowed; "
                                 "allowed: a list of positive integers, each once")
        for key in _fixed(op, sweep):
            if key in e and not _positive(e[key]):
                raise UsageError(f"{where}.{key}: {e[key]!r} is not allowed; allowed: a positive integer")
        if op == "sdpa" and "heads" in e and "kv_heads" in e and e["heads"] % e["kv_heads"]:
            raise UsageError(f"{where}: heads {e['heads']} is not a multiple of kv_heads {e['kv_heads']}; "
                             "allowed: heads a multiple of kv_heads (grouped-query attention)")
        for cid, _ in _entry_ids(e):
            if cid in seen:
                raise UsageError(f"{where}: cell {cid} is also made by dims.ops[{seen[cid]}]; allowed: each cell once")
            seen[cid] = i


def _positive(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _entry_ids(e):
    op, sweep = OPS[e["op"]], e["sweep"]
    lo, hi, step = e["range"]
    shape = "".join(f"-{ID_TAG[k]}{e[k]}" for k in _fixed(e["op"], sweep) if k in e)
    out = []
    for combo in _product([(k, e[k]) for k in op.loops]):
        for v in range(lo, hi + 1, step):   # neighbours run one after the other: drift cannot fake a cliff
            params = {"op": e["op"], "sweep": sweep, "value": v, **combo,
                      **{k: e[k] for k in _fixed(e["op"], sweep) if k in e}}
            loops = "".join(f"-{ID_TAG[k]}{combo[k]}" for k in op.loops)
            out.append((f"{e['op']}{shape}-{ID_TAG[sweep]}{v}{loops}", params))
    return out


def _product(lists):
    out = [{}]
    for key, vals in lists:
        out = [{**o, key: v} for o in out for v in vals]
    return out


def cell_ids(section):
    """[(test id, params)] in the YAML's order, e.g. lowrank-r358-M2048 or lowrank-din64-dout32-r30-M1."""
    return [c for e in section["ops"] for c in _entry_ids(e)]


def cost(params):
    """Relative cost for shard balancing: the swept dim times the rows it multiplies."""
    return params["value"] * params.get("M", params.get("batch", 1) * params.get("seq", 1))


# ---------------------------------------------------------------- one cell

def shape(params, config):
    """The operator's every dim: the cell's own, then the model's for those the YAML entry left out."""
    kv_dim = config.num_key_value_heads * head_dim(config)
    model = {"d_in": config.hidden_size, "d_out": kv_dim, "k": config.hidden_size, "n": config.hidden_size,
             "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads}
    given = {**model, **params, params["sweep"]: params["value"]}
    return {k: given[k] for k in OPS[params["op"]].dims}


def flops(op, s):
    """Multiply-adds x 2; causal attention counts half the seq x seq square, as roofline.prefill_flops does."""
    if op == "lowrank":
        return 2 * s["M"] * s["r"] * (s["d_in"] + s["d_out"])
    if op == "gemm":
        return 2 * s["M"] * s["k"] * s["n"]
    return 2 * s["batch"] * s["heads"] * s["seq"] ** 2 * s["head_dim"]


def bytes_moved(op, s, element_size):
    """Each operand read once and the output written once; lowrank's M x r intermediate both."""
    if op == "lowrank":
        n = s["M"] * s["d_in"] + s["r"] * (s["d_in"] + s["d_out"]) + 2 * s["M"] * s["r"] + s["M"] * s["d_out"]
    elif op == "gemm":
        n = s["M"] * s["k"] + s["k"] * s["n"] + s["M"] * s["n"]
    else:
        n = s["batch"] * s["seq"] * s["head_dim"] * 2 * (s["heads"] + s["kv_heads"])
    return n * element_size


def operator(op, s, dtype, dev, seed):
    """A no-argument callable running the operator on seeded random inputs (weights scaled by 1/sqrt(fan-in),
    so bf16 outputs stay finite)."""
    import torch
    import torch.nn.functional as F
    gen = torch.Generator(device=dev).manual_seed(seed)

    def rand(*size, scale=1.0):
        return torch.randn(*size, generator=gen, device=dev, dtype=dtype) * scale

    if op == "lowrank":
        x, a, b = rand(s["M"], s["d_in"]), rand(s["r"], s["d_in"], scale=s["d_in"] ** -0.5), \
            rand(s["d_out"], s["r"], scale=s["r"] ** -0.5)
        return lambda: F.linear(F.linear(x, a), b)
    if op == "gemm":
        x, w = rand(s["M"], s["k"]), rand(s["n"], s["k"], scale=s["k"] ** -0.5)
        return lambda: F.linear(x, w)
    q = rand(s["batch"], s["heads"], s["seq"], s["head_dim"])
    k, v = (rand(s["batch"], s["kv_heads"], s["seq"], s["head_dim"]) for _ in range(2))
    try:
        F.scaled_dot_product_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], is_causal=True, enable_gqa=True)
    except TypeError:   # torch < 2.5: repeat K/V per query head once, outside the timed call
        rep = s["heads"] // s["kv_heads"]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def measure(clock, config, dtype, dev, seed, warmup, iters, trials, op, sweep, value, **sizes):
    """One cell: `trials` x `iters` timed calls after `warmup`, then one profiled pass of `iters` calls
    outside the timed region (the profiler's overhead never reaches a sample) for the kernels it ran."""
    import torch

    from gcompress_bench.measure import ops
    params = {"op": op, "sweep": sweep, "value": value, **sizes}
    s = shape(params, config)
    dtype = getattr(torch, dtype)
    with torch.inference_mode():
        fn = operator(op, s, dtype, dev, seed)
        latency, _ = clock.trials(fn, warmup, iters, trials)
        prof = ops.profile(fn, iters, dev)
    names = [k["name"] for k in prof["top_kernels"]]
    return {"samples_ms": {"latency": latency}, "op": op, "sweep": sweep, "value": value, "shape": s,
            "flops": flops(op, s), "bytes": bytes_moved(op, s, torch.empty((), dtype=dtype).element_size()),
            "device_name": device_name(dev), "kernels": names,
            "gemm_kernels": {n: info for n in names if (info := ops.gemm_kernel(n))},
            "profile": {"when": "after the timed region",
                        **{k: v for k, v in prof.items() if k not in ("top_kernels", "gemm_kernels")}}}


def derive(rec, stats):
    p50_s = stats["latency"]["p50"] / 1e3
    return {"TFLOPs": rec["flops"] / p50_s / 1e12, "GBps": rec["bytes"] / p50_s / 1e9}


# ---------------------------------------------------------------- the table

def table(summary):
    """The run's sweeps as series of (value, p50, p99, kernels), one per operator, fixed shape and M (or
    batch and seq); None when the run has no ok dims cell."""
    cells = [(cid, c) for cid, c in summary["cells"].items() if c.get("suite") == "dims" and c["status"] == "ok"]
    if not cells:
        return None
    series = {}
    for cid, c in cells:
        p, st = c["params"], c["stats_ms"]["latency"]
        loops = {k: p[k] for k in OPS[p["op"]].loops}
        fixed = {k: v for k, v in c["shape"].items() if k not in loops and k != p["sweep"]}
        key = json.dumps([p["op"], p["sweep"], fixed, loops], sort_keys=True)
        series.setdefault(key, {"op": p["op"], "sweep": p["sweep"], "shape": fixed, **loops, "points": []})
        series[key]["points"].append({"value": p["value"], "p50_ms": st["p50"], "p99_ms": st["p99"],
                                      "kernels": c["kernels"], "cell": cid})
    for s in series.values():
        s["points"].sort(key=lambda pt: pt["value"])
    return {"device_name": cells[0][1]["device_name"], "dtype": summary["dtype"], "model": summary["model"],
            "run_id": summary["run_id"], "series": list(series.values())}


def markdown(table):
    """Per sweep series: p50 at every value, its alignment, and the cliffs (neighbours > 10% apart)."""
    if not table:
        return []
    lines = ["", "## dims (p50 ms per value of the swept dim)", "",
             f"Measured on {table['device_name']}, {table['dtype']}; table: {dimtable.TABLE_FILE}. aligned: the largest "
             "of 8/16/32/64 dividing the value. A cliff: neighbours whose p50 differ by more than 10%."]
    for x in table["series"]:
        at = ", ".join(f"{k}={x[k]}" for k in ("M", "batch", "seq") if k in x)
        fixed = ", ".join(f"{k}={v}" for k, v in x["shape"].items())
        lines += ["", f"### {x['op']} over {x['sweep']} ({fixed}; {at})", "",
                  f"| {x['sweep']} | aligned | p50 | p99 | top kernel |", "|---|---|---|---|---|"]
        lines += [f"| {p['value']} | {dimtable.alignment(p['value']) or ''} | {num(p['p50_ms'])} | {num(p['p99_ms'])} | "
                  f"{kernel_short(p['kernels'][0]) if p['kernels'] else ''} |" for p in x["points"]]
        found = dimtable.cliffs(x["points"])
        lines += ["", f"Cliffs: {len(found) or 'none'}"]
        lines += [f"- {c['from']} -> {c['to']}: p50 x{c['ratio']:.3f}; {kernel_change(c)}" for c in found]
    return lines


def kernel_change(cliff):
    before, after = set(cliff["kernels_from"]), set(cliff["kernels_to"])
    if before == after:
        return "same kernels"
    return "kernels dropped: " + "; added: ".join(", ".join(sorted({kernel_short(k) for k in ks})) or "none"
                                                  for ks in (before - after, after - before))


def kernel_short(name):
    """A kernel as a line can hold it: a long templated name by its longest identifier (cutlass_80_..._align2,
    nvjet_sm90_..., cudnn_..._sdpa_...), which is the part that tells kernels apart."""
    return name if len(name) <= 40 else max(re.findall(r"[A-Za-z_]\w*", name), key=len)


class Dims(Suite):
    marker = job = "dims"
    description = "one operator at the model's shapes, one dim stepped (no weights are loaded)"
    timed = True
    opt_in = True
    needs_model = False
    headline = "latency"
    settings = ("dims.warmup", "dims.iters", "dims.trials", "dims.ops", "seed")

    def ids(self, section):
        return cell_ids(section)

    def cost(self, params):
        return cost(params)

    def validate(self, section):
        super().validate(section)
        check_grid(section)

    def measure(self, cell, run, lm, clock, meter):
        from gcompress_bench.measure.cell import run_cell
        g = run.cfg["dims"]
        return run_cell(measure, run.device, clock=clock, config=run.spec.config, dtype=run.cfg["dtype"],
                        dev=run.device, seed=run.cfg["seed"], warmup=g["warmup"], iters=g["iters"],
                        trials=g["trials"], **cell.params)

    def derive(self, rec, stats):
        return derive(rec, stats)

    def markdown(self, s, rows):
        return markdown(table(s))

    def write(self, summary, raw_cells, run_dir):
        """The run's sweep table (what `--align-policy budget:` reads) and a latency plot per operator."""
        from gcompress_bench.results import plots
        from gcompress_bench.results.store import write_json
        t = table(summary)
        if not t:
            return []
        write_json(run_dir / dimtable.TABLE_FILE, t)
        return [save_plot(plots.dims_latency([x for x in t["series"] if x["op"] == op],
                                             f"{op}, {t['device_name']}, {t['dtype']} (p50)"), run_dir, f"dims_{op}.png")
                for op in dict.fromkeys(x["op"] for x in t["series"])]


register(Dims())
