"""infer_sweep cells: prefill-only forward passes and greedy decode through the suite's own loop.

The decode loop is plain: one forward over the prompt, then one forward per token, greedy argmax
kept on the device, EOS ignored, a clock mark after every step and one host synchronization at
the end of the generation. Two decode modes run the same loop:
- eager: a DynamicCache and plain forwards (what HF's generate() does by default); a step is
  bound by Python launching kernels;
- compiled: a StaticCache sized to the cell (ctx + gen) and the step compiled by torch.compile
  with CUDA graphs (mode reduce-overhead), so a step is one graph replay and the GPU's work
  dominates. The prompt is prefilled eagerly, as HF does. torch's automatic dynamic shapes keep
  a grid to three graphs: the first cell's, one dynamic in the cache length, one dynamic in the
  batch; dynamic=True from the start compiles one graph about as slowly as those three together,
  so it saves nothing (docs/PERFORMANCE.md, design notes). CUDA graphs are still recorded per
  shape. Compilation and recording happen in one extra generation per cell before the warm-up,
  and are recorded, not measured.
"""
import inspect
import os
import time
from statistics import median

import torch
from torch._dynamo.utils import counters
from transformers import DynamicCache, LlamaForCausalLM, StaticCache

from gcompress_bench.measure import energy, ops
from gcompress_bench.measure.roofline import prefill_flops
from gcompress_bench.models import CACHE_ROOT, weight_bytes

# transformers renamed `past_key_values` to `cache` (deprecated from 5.2x); accept both releases.
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def use_compile_cache():
    """Point inductor's on-disk caches (compiled graphs, Triton kernels, autotuning) at the suite's
    shared cache unless the environment chose a folder other than torch's default. That default is
    a node-local /tmp folder, so on a cluster every night compiled every graph again; here a graph
    compiled once on any node is loaded. Inductor writes its entries atomically, so concurrent jobs
    may share the folder. torch sets the variable to its default when dynamo is imported, so
    "chosen" means a value other than that default."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and chosen != default_cache_dir():
        return {"dir": chosen, "set_by": "environment"}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(CACHE_ROOT / "torch-compile")
    return {"dir": os.environ["TORCHINDUCTOR_CACHE_DIR"], "set_by": "suite"}


def _graph_cache():
    return {"hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"]}


def random_ids(vocab, batch, length, seed, device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def _cache_tensors(cache):
    return [t for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if t is not None]


def kv_cache_bytes(cache):
    return sum(t.numel() * t.element_size() for t in _cache_tensors(cache))


def kv_bytes_per_position(cache):
    """Bytes one sequence position of one batch row occupies in the cache, all layers, K and V."""
    return sum(t.numel() // (t.shape[0] * t.shape[2]) * t.element_size() for t in _cache_tensors(cache))


BUSY_ITERS = 3   # profiled iterations (decode: steps) that give a cell's device-busy share when --ops-profile is off


def _device_time(fn, ops_profile, device, most=None):
    """After the measured iterations: the ops profile (when asked for) and the device's own time per
    iteration, from it or, on CUDA, from a short profile of BUSY_ITERS iterations; at most `most` iterations."""
    if not ops_profile and device.type != "cuda":   # a busy share means nothing where the host runs the operators
        return {}
    t0, n = time.perf_counter(), ops_profile or BUSY_ITERS
    prof = ops.profile(fn, min(n, most) if most else n, device)
    busy = {"iters": prof["iters"], "device_ms_per_iter": prof["profiler_ms_per_iter"], "unit": prof["unit"],
            "profile_s": round(time.perf_counter() - t0, 3)}
    return {"busy": busy, **({"ops_profile": prof} if ops_profile else {})}


@torch.inference_mode()
def prefill(lm, clock, batch, seq_len, warmup, iters, trials, seed, ops_profile=0, meter=None):
    """One iteration = one forward pass over batch x seq_len tokens, last position's logits only.
    ops_profile > 0: that many more forwards under the profiler, after the measured ones. meter: the
    session's energy.Meter (one for the device when None)."""
    ids = random_ids(lm.spec.config.vocab_size, batch, seq_len, seed, lm.device)

    def forward():
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    t0 = time.perf_counter()
    for _ in range(warmup):
        forward()
    warmup_s = time.perf_counter() - t0
    meter = meter or energy.Meter(lm.device)
    with meter.span() as span:
        latency, host = clock.trials(forward, 0, iters, trials)
    return {"samples_ms": {"latency": latency}, "host_samples_ms": {"latency": host}, "warmup_s": round(warmup_s, 3),
            "tokens": batch * seq_len, "flops": prefill_flops(lm.model, batch, seq_len),
            "energy": energy.prefill_record(meter, span, iters * trials, batch * seq_len),
            **_device_time(forward, ops_profile, lm.device)}


def step(model, ids, cache):
    """One forward that extends the cache; returns the greedy next token, (batch, 1), on the device."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_ARG: cache})
    return out.logits[:, -1:].argmax(-1)


def compiled_step(backend="inductor", inductor=None):
    """`step` under torch.compile. inductor gets CUDA graphs (what mode reduce-overhead sets) and the
    run's inductor settings (`inductor`, e.g. coordinate_descent_tuning); tests on CPU pass
    backend="aot_eager" to check the capture (one graph, no break) without a compiler toolchain."""
    compiled = torch.compile(step, backend=backend, fullgraph=True,
                             **({"options": {"triton.cudagraphs": True, **(inductor or {})}}
                                if backend == "inductor" else {}))

    def replay(model, ids, cache):
        # a CUDA-graph replay overwrites its output buffer: keep each token in its own tensor
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(model, ids, cache).clone()
    return replay


def generate(model, ids, gen, clock, decode_step=step, cache=None):
    """Greedy generation of exactly `gen` tokens; returns tokens, per-interval ms, the same intervals'
    host ms and the cache. The prompt always goes through the eager `step`; the gen-1 decode steps
    through `decode_step`."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    marks = [clock.mark()]
    token = step(model, ids, cache)
    tokens = [token]
    marks.append(clock.mark())
    for _ in range(gen - 1):
        token = decode_step(model, token, cache)
        tokens.append(token)
        marks.append(clock.mark())
    return torch.cat(tokens, dim=1), clock.intervals_ms(marks), clock.host_ms(marks), cache


def generator(model, ids, gen, mode, backend="inductor", inductor=None):
    """One cell's generations, as run(clock) -> generate(...), and its (fresh cache, decode step).
    eager: a fresh DynamicCache each time; compiled: one StaticCache per cell, reset in place, so
    its tensors keep the addresses the CUDA graphs captured."""
    if mode == "eager":
        fresh, decode_step = (lambda: DynamicCache(config=model.config)), step
    else:
        static = StaticCache(config=model.config, max_cache_len=ids.shape[1] + gen)
        decode_step = compiled_step(backend, inductor)

        def fresh():
            static.reset()
            return static
    return (lambda clock: generate(model, ids, gen, clock, decode_step, fresh())), fresh, decode_step


def one_step(model, ids, fresh, decode_step):
    """A decode step to profile, after the prompt was prefilled outside the profiler: a decode cell's
    profile is per step, as its step samples are. A static cache has room for gen - 1 of them."""
    cache = fresh()
    token = [step(model, ids, cache)]

    def one():
        token[0] = decode_step(model, token[0], cache)
    return one


def _graphs():
    return counters["stats"]["unique_graphs"]


@torch.inference_mode()
def decode(lm, clock, batch, ctx, gen, warmup, iters, trials, seed, mode="eager", backend="inductor", ops_profile=0,
           inductor=None, meter=None):
    """One iteration = one whole generation: 1 time-to-first-token sample and gen-1 step samples.
    ops_profile > 0: that many more decode steps under the profiler, after the measured generations.
    Energy: the measured generations' span, less their prompts' energy from a probe run after them."""
    ids = random_ids(lm.spec.config.vocab_size, batch, ctx, seed, lm.device)
    run, fresh, decode_step = generator(lm.model, ids, gen, mode, backend, inductor)
    # One untimed generation at the cell's own positions before any warm-up: it compiles a compiled step, and
    # in eager mode it builds what a backend plans per new KV length (cuDNN's SDPA plans), which would
    # otherwise be measured as decode when the warm-up is 0. Its step time is kept as the cold cost.
    graphs, cached, t0 = _graphs(), _graph_cache(), time.perf_counter()
    _, first_ms, _, _ = run(clock)
    first = {"first_generation_s": round(time.perf_counter() - t0, 3),
             "step_p50_ms": median(first_ms[1:]) if gen > 1 else None}
    compile_info = None
    if mode != "eager":
        compile_info = {"backend": backend, "inductor": inductor or {},
                        "first_generation_s": first["first_generation_s"], "graphs_compiled": _graphs() - graphs,
                        "graph_cache": {k: v - cached[k] for k, v in _graph_cache().items()}}
    t0 = time.perf_counter()
    for _ in range(warmup):
        run(clock)
    warmup_s = time.perf_counter() - t0
    ttft, steps, total, host = [], [], [], []
    meter = meter or energy.Meter(lm.device)
    with meter.span() as span:
        for _ in range(trials):
            t_ttft, t_step, t_total, t_host = [], [], [], []
            for _ in range(iters):
                tokens, ms, host_ms, cache = run(clock)
                t_ttft.append(ms[0])
                t_step.extend(ms[1:])
                t_total.append(sum(ms))
                t_host.extend(host_ms[1:])
            ttft.append(t_ttft)
            steps.append(t_step)
            total.append(t_total)
            host.append(t_host)
    probe = energy.prompt_probe(meter, lambda: step(lm.model, ids, fresh()), median(x for t in ttft for x in t))
    joules = energy.decode_record(meter, span, probe, iters * trials, sum(map(sum, steps)) / 1e3, batch, gen)
    per_position = kv_bytes_per_position(cache)
    # a step at position p must read every weight but the input embedding once, and p positions of KV
    weights, kv = weight_bytes(lm.model, decode_step=True), per_position * batch * (ctx + gen / 2)
    return {"samples_ms": {"ttft": ttft, "step": steps, "total": total}, "host_samples_ms": {"step": host},
            "compile": compile_info, "cold": first, "warmup_s": round(warmup_s, 3), "kv_cache_bytes": kv_cache_bytes(cache),
            "kv_bytes_per_position": per_position,
            "bytes_per_step": weights + kv, "weight_bytes_per_step": weights, "kv_bytes_per_step": kv,
            "tokens_per_generation": batch * gen, "first_tokens": tokens[0, :8].tolist(), "energy": joules,
            **(_device_time(one_step(lm.model, ids, fresh, decode_step), ops_profile, lm.device, most=gen - 1)
               if gen > 1 else {})}
