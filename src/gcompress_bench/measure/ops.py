"""Where a cell's time goes: its kernels (GPU) or operators (CPU) under torch.profiler, by family.

The profile is taken on extra iterations after a cell's measured ones, so the profiler's overhead never
reaches a measured sample; its own CUDA-event (or host) time is recorded beside the profiler's total,
so a profile that misses time (the GPU idle between launches, kernels the profiler lost) shows as a
coverage below 1.

FAMILIES is the one classification, first match wins, on lowercase names. It is tested on the names
in tests/data/kernel_names.tsv, seen on an H200: cuBLAS, cuBLASLt (nvjet) and cutlass GEMMs and GEMVs,
cuDNN and PyTorch flash attention, PyTorch's elementwise, copy and reduction kernels, inductor's
generated triton kernels, and the aten operators a CPU profile shows. Inductor fuses whatever
surrounds an operator into its pointwise kernels and names them after all of it (a kernel that
prepares attention's inputs is "..._scaled_dot_product_cudnn_attention_..."); those count as
elementwise, except fused reductions: one that computes a matrix product (coordinate-descent tuning
turns batch-1 GEMVs into reductions, "triton_red_fused_..._mm_...", often with the RMSNorm before
it) counts as gemm, since reading the weight is its work; one over a batched product or a softmax
(decode attention's scores) as attention; one that ends an RMSNorm (rsqrt) as norm.
"""
import hashlib
import re
from collections import defaultdict

import torch

from gcompress_bench.measure import timing

FAMILIES = (
    ("gemm", r"^triton_(per|red)_fused.*_mm_"),
    ("attention", r"^triton_(per|red)_fused.*(_bmm_|softmax)"),
    ("norm", r"^triton_(per|red)_.*rsqrt"),
    ("elementwise", r"^triton_(poi|per|red)_"),
    ("attention", r"flash|fmha|attention|sdpa|softmax|cudnn"),
    ("gemm", r"gemm|gemv|nvjet|xmma|cublas|cutlass|splitk|triton_tem_|_mm_|^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$"),
    ("norm", r"rms_?norm|layer_?norm|rsqrt|meanops|^aten::mean$"),
    ("data_movement", r"copy|memcpy|memset|fillfunctor|catarray|(^|[^a-z])cat([^a-z]|$)|transpose|permute|index|gather|scatter|"
                      r"clone|contiguous|"
                      r"^aten::(view|reshape|slice|select|expand|unsqueeze|squeeze|t|to|_to_copy|empty|zeros|"
                      r"as_strided|split|chunk|embedding|fill_|arange|_unsafe_view|detach)$"),
    ("elementwise", r"elementwise|vectorized|unrolled|^aten::(mul|add|sub|div|neg|pow|silu|"
                    r"gelu|exp|tanh|sigmoid|where|masked_fill|cos|sin|rsub)_?$"),
)
FAMILY_NAMES = tuple(dict.fromkeys(f for f, _ in FAMILIES)) + ("other",)
# which table sorted a profile: profiles sorted by different tables are not compared family by family
CLASSIFICATION = hashlib.sha256(repr(FAMILIES).encode()).hexdigest()[:12]
_COMPILED = [(f, re.compile(p)) for f, p in FAMILIES]
TOP = 15


def family(name):
    n = name.lower()
    return next((f for f, pat in _COMPILED if pat.search(n)), "other")


def gemm_kernel(name):
    """What a GEMM kernel's name says of the path the library chose: library, architecture, tile and the
    operand alignment (cutlass's `alignN`, cuBLAS's `ldgN` vector width), or None for other kernels."""
    n = name.lower()
    if family(name) != "gemm" or n.startswith("aten::"):
        return None
    lib = ("cublasLt nvjet" if "nvjet" in n else "cutlass" if "cutlass" in n else "triton" if "triton" in n
           else "cublas gemv" if "gemv" in n else "cublas")
    align = re.search(r"align(\d+)", n) or re.search(r"ldg(\d+)", n)
    arch = re.search(r"(?:sm_?|cutlass_)(\d{2,3})", n)
    tile = re.search(r"(\d+x\d+(?:x\d+)?)", n)
    return {"library": lib, "align": int(align.group(1)) if align else None,
            "arch": f"sm{arch.group(1)}" if arch else ("sm80" if "ampere" in n else None), "tile": tile.group(1) if tile else None}


def profile(fn, iters, device, top=TOP):
    """Run fn() `iters` times under torch.profiler; per iteration: each family's time, the top kernels
    (name, family, input shapes of the op that launched it, count, ms), every GEMM kernel, and the
    profiler's total against the clock's."""
    from torch.profiler import ProfilerActivity
    cuda = torch.device(device).type == "cuda"
    clock = timing.Clock(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        marks = [clock.mark()]
        for _ in range(iters):
            fn()
        marks.append(clock.mark())
        clock_ms = clock.intervals_ms(marks)[0]
    return summarize(_kernel_times(prof.events(), cuda), iters, clock_ms, top, cuda)


def _kernel_times(events, cuda):
    """[(name, ms, shapes)] of every GPU kernel (cuda) or every CPU operator's self time."""
    if not cuda:
        return [(e.name, e.self_cpu_time_total / 1e3, e.input_shapes) for e in events
                if e.device_type == torch.autograd.DeviceType.CPU and e.self_cpu_time_total > 0]
    launched_by = {}   # kernel name -> input shapes of the aten op that launched it (not in a CUDA graph)
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU and e.input_shapes and e.kernels:
            for k in e.kernels:
                launched_by.setdefault(k.name, [e.name, e.input_shapes])
    # a GPU-side range (e.g. "## Call CompiledFxGraph ... ##" around a CUDA-graph replay) spans kernels
    # that are listed themselves: counting it too would count them twice
    return [(e.name, e.device_time_total / 1e3, launched_by.get(e.name)) for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            and not e.name.startswith("## ")]


def summarize(kernels, iters, clock_ms, top=TOP, cuda=True):
    """The per-iteration profile of [(name, ms, shapes)]; separate from `profile` so it is testable
    on names alone."""
    families, per_name = defaultdict(float), {}
    for name, ms, shapes in kernels:
        families[family(name)] += ms / iters
        row = per_name.setdefault(name, {"name": name, "family": family(name), "count": 0, "ms_per_iter": 0.0,
                                         "shapes": shapes})
        row["count"] += 1
        row["ms_per_iter"] += ms / iters
    rows = sorted(per_name.values(), key=lambda r: -r["ms_per_iter"])
    for r in rows:
        r["count"] = r["count"] / iters
    total = sum(families.values())
    return {"iters": iters, "device": "cuda" if cuda else "cpu", "classification": CLASSIFICATION,
            "unit": "GPU kernel time" if cuda else "CPU operator self time",
            "families_ms": {f: families.get(f, 0.0) for f in FAMILY_NAMES},
            "profiler_ms_per_iter": total, "clock_ms_per_iter": clock_ms / iters,
            "coverage": total / (clock_ms / iters) if clock_ms > 0 else None,
            "kernels_per_iter": sum(r["count"] for r in rows),
            "top_kernels": rows[:top],
            "gemm_kernels": [{**r, **gemm_kernel(r["name"])} for r in rows if gemm_kernel(r["name"])]}
