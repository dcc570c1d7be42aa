"""Rooflines: the ceilings this device reaches, measured once per session, and what a cell needs.

A decode step must read every weight once (the input embedding only gathers rows) and the KV of
every live position; a prefill must do 2 FLOPs per weight per token plus causal attention. The
achieved rate (that minimum over the measured p50) against the measured ceiling says how far a
cell is from the hardware, and whether a slow cell is launch-bound rather than memory-bound.
"""
import time

import torch

from gcompress_bench.measure.timing import Clock
from gcompress_bench.models import head_dim

# sizes that fill an H200 and stay quick on a laptop CPU
SIZES = {"cuda": {"copy_mib": 2048, "gemm_n": 8192, "reps": 20}, "cpu": {"copy_mib": 64, "gemm_n": 1024, "reps": 5}}


def _median_ms(clock, fn, reps):
    fn()
    marks = [clock.mark()]
    for _ in range(reps):
        fn()
        marks.append(clock.mark())
    ms = sorted(clock.intervals_ms(marks))
    return ms[len(ms) // 2]


@torch.inference_mode()
def measure_ceilings(device, dtype):
    """Device copy bandwidth (bytes read + written) and a square matmul's rate in the run's dtype."""
    device = torch.device(device)
    size = SIZES["cuda" if device.type == "cuda" else "cpu"]
    clock = Clock(device)
    nbytes = size["copy_mib"] * 2**20
    src = torch.randn(nbytes // 4, device=device)   # random, not zeros: zeros can run faster
    dst = torch.empty_like(src)
    copy_ms = _median_ms(clock, lambda: dst.copy_(src), size["reps"])
    n = size["gemm_n"]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    gemm_ms = _median_ms(clock, lambda: a @ b, size["reps"])
    return {"copy_GBps": round(2 * nbytes / copy_ms / 1e6, 1), "gemm_TFLOPs": round(2 * n**3 / gemm_ms / 1e9, 2),
            "launches_per_s": launch_rate(device),
            "method": f"median of {size['reps']}: copy of {size['copy_mib']} MiB (read + write counted), "
                      f"{n}x{n} @ {n}x{n} matmul in {str(dtype).removeprefix('torch.')}; best of 5 x "
                      f"{LAUNCHES} one-element in-place adds, host clock, one sync each",
            "device": str(device), "dtype": str(dtype).removeprefix("torch.")}


LAUNCHES = 20000


@torch.inference_mode()
def launch_rate(device):
    """Tiny kernels the host issues per second: the ceiling of a step bound by Python launching work.
    Measured at session start and end; a host whose rate moved was shared or throttled meanwhile."""
    device = torch.device(device)
    x = torch.zeros(1, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rates = []
    for _ in range(6):
        sync()
        t0 = time.perf_counter()
        for _ in range(LAUNCHES):
            x.add_(1)
        sync()
        rates.append(LAUNCHES / (time.perf_counter() - t0))
    return round(max(rates[1:]))   # a ceiling: noise only slows a pass; the first pass warms up


def prefill_flops(model, batch, seq_len):
    """2 FLOPs per layer weight per token, the output projection for the last position only
    (logits_to_keep=1), and causal attention: QK^T and PV over half the S x S square per head."""
    cfg = model.config
    layer_params = sum(p.numel() for layer in model.model.layers for p in layer.parameters() if p.dim() > 1)
    attention = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim(cfg) * seq_len ** 2
    return batch * (2 * layer_params * seq_len + 2 * cfg.vocab_size * cfg.hidden_size + attention)


def decode_breakdown(cell, ceilings):
    """Where a decode step's time goes against its floors: the weights read once and the live KV read
    once at the copy ceiling. The rest is split into host gaps (the step minus the device's own time),
    GEMM above the weights floor, attention above the KV floor and the other kernels (the last three
    only when the cell was profiled by operator family). `largest` names the biggest part of the gap."""
    bw = (ceilings or {}).get("copy_GBps")
    if not bw or "weight_bytes_per_step" not in cell:
        return None
    weights_ms = cell["weight_bytes_per_step"] / bw / 1e6
    kv_ms = cell["kv_bytes_per_step"] / bw / 1e6
    measured = cell["ms_per_token"]
    out = {"weights_floor_ms": weights_ms, "kv_floor_ms": kv_ms, "measured_ms": measured,
           "floor_share": (weights_ms + kv_ms) / measured, "gap_ms": measured - weights_ms - kv_ms}
    device_ms = (cell.get("busy") or {}).get("device_ms_per_iter")
    parts = {}
    if device_ms is not None:
        parts["host gaps"] = measured - device_ms
        fam = (cell.get("ops_profile") or {}).get("families_ms")
        if fam:
            parts["GEMM above the weights floor"] = fam["gemm"] - weights_ms
            parts["attention above the KV floor"] = fam["attention"] - kv_ms
            parts["other kernels"] = sum(v for k, v in fam.items() if k not in ("gemm", "attention"))
        else:
            parts["kernels above the floors"] = device_ms - weights_ms - kv_ms
    out["parts_ms"] = parts
    out["largest"] = max(parts, key=parts.get) if parts else None
    return out


def decode_rate(rec_summary, ceilings):
    """A decode step's bytes per second at the p50 and its share of the copy ceiling (None where unknown)."""
    if "bytes_per_step" not in rec_summary:
        return None
    rate = rec_summary["bytes_per_step"] / (rec_summary["ms_per_token"] / 1e3) / 1e9
    ceiling = (ceilings or {}).get("copy_GBps")
    return {"GBps": round(rate, 1), "pct_of_copy": round(100 * rate / ceiling, 1) if ceiling else None}


def prefill_rate(rec_summary, ceilings):
    """A forward's FLOP/s at the p50 and its share of the matmul ceiling (None where unknown)."""
    if "flops" not in rec_summary:
        return None
    rate = rec_summary["flops"] / (rec_summary["stats_ms"]["latency"]["p50"] / 1e3) / 1e12
    ceiling = (ceilings or {}).get("gemm_TFLOPs")
    return {"TFLOPs": round(rate, 2), "pct_of_gemm": round(100 * rate / ceiling, 1) if ceiling else None}
