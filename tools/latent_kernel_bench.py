"""GPU check and benchmark of the fused latent decode kernel (gcompress_bench.methods.palu.latent_kernel) against
latent.py's torch decode attention, at one Llama-3-8B layer's shapes (32 heads, 8 KV heads,
head_dim 128, PaLU group size 4: 2 groups of 512 rows; K and V ranks 358 unaligned, 352 aligned).

    PYTHONPATH=src python tools/latent_kernel_bench.py            # the table, then the model check
    PYTHONPATH=src python tools/latent_kernel_bench.py --sweep    # block sizes / warps / split, fused only
    PYTHONPATH=src ncu -k regex:_split_kernel python tools/latent_kernel_bench.py --once --batches 8 --lengths 8192

Prints JSON lines: "env" first; one "layer" line per (ranks, B, T): errors of fused and torch path
(bf16) against the torch path in fp32, fused vs torch path, and p50 ms over --iters CUDA-event
timed calls after --warmup, eager and compiled (inductor, reduce-overhead = CUDA graphs,
fullgraph); then a "model" line: a 2-layer random Llama through HF's forward, greedy decode, the
fused kernel eager (DynamicCache) and compiled (StaticCache, CUDA graphs) against the torch path;
last, "mutation_analysis": torch must see that the kernels write only their outputs, else
inductor clones every input (the whole cache) each step. "cudagraph_skips" must be 0: a skip means
the compiled step ran without CUDA graphs.
"""
import argparse
import copy
import inspect
import json
import logging
import statistics
import sys
from types import SimpleNamespace

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from gcompress_bench.measure import layout, roofline
from gcompress_bench.methods.palu import latent, latent_kernel
from gcompress_bench.methods.palu.factors import PaluLinear

DEV, DTYPE = "cuda", torch.bfloat16
HEADS, KV, HD, GS = 32, 8, 128, 4
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def emit(kind, **kw):
    print(json.dumps({"kind": kind, **kw}), flush=True)


class Warnings(logging.Handler):
    """torch's analysis of which kernel arguments are written: a failure there is only a warning."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        if "assuming every input is mutated" in record.getMessage():
            self.seen.append(record.getMessage()[:300])


def cudagraph_skips():
    from torch._dynamo.utils import counters
    return counters["inductor"]["cudagraph_skips"]


def llama3_config(hidden=4096, layers=1, vocab=128256):
    """Llama-3.1-8B's attention and RoPE (its 131072 positions size enable()'s RoPE table)."""
    return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HD, vocab_size=vocab,
                       max_position_embeddings=131072,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})


def palu_proj(hidden, rank):
    p = PaluLinear(hidden, [rank] * (KV // GS), GS * HD, None, DTYPE, torch.device(DEV))
    with torch.no_grad():
        for u in p.U:
            u.weight.normal_(0, rank ** -0.5)    # K of unit variance from a unit-variance latent
    return p


def make_layer(config, rank, shared):
    lin = lambda i, o: nn.Linear(i, o, bias=False, dtype=DTYPE, device=DEV)  # noqa: E731
    attn = SimpleNamespace(layer_idx=0, head_dim=HD, scaling=HD ** -0.5, q_proj=lin(config.hidden_size, HEADS * HD),
                           k_proj=palu_proj(config.hidden_size, rank), v_proj=palu_proj(config.hidden_size, rank),
                           o_proj=lin(HEADS * HD, config.hidden_size))
    return latent.LatentAttention(attn, LlamaRotaryEmbedding(config).to(DEV), config, shared)


def p50_ms(fn, iters, warmup):
    for _ in range(warmup):
        torch.compiler.cudagraph_mark_step_begin()
        fn()
    times = []
    for _ in range(iters):
        torch.compiler.cudagraph_mark_step_begin()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def errors(x, ref):
    x, ref = x.float().reshape(ref.shape), ref.float()
    return {"max_abs": (x - ref).abs().max().item(), "max_rel": ((x - ref).abs().max() / ref.abs().max()).item(),
            "rel_l2": (torch.linalg.norm(x - ref) / torch.linalg.norm(ref)).item()}


def compiled(fn):
    return torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)


def inputs(b, t, rank, g):
    """A new token's query (after RoPE), K and V latents of t positions, and the live length."""
    q = 1.5 * torch.randn(b, HEADS, 1, HD, device=DEV, generator=g).to(DTYPE)
    zk, zv = (torch.randn(b, 1, t, 2 * rank, device=DEV, generator=g).to(DTYPE) for _ in range(2))
    return q, zk, zv, torch.full((1,), t, device=DEV, dtype=torch.long)


def fused_attention(layer, shared, q, zk, zv, length, **cfg):
    return latent_kernel.decode_attention(q, zk, zv, layer.k_up, layer.k_meta, shared.cos, shared.sin, length,
                                          layer.scaling, layer.v_ranks, shared.sm_count, **cfg)


def layer_rows(args, shared, ceilings):
    config = llama3_config()
    for rank in args.ranks:
        layer = make_layer(config, rank, shared)
        ref_layer = copy.deepcopy(layer).float()
        for b in args.batches:
            for t in args.lengths:
                torch._dynamo.reset()
                g = torch.Generator(device=DEV).manual_seed(t + b)
                q, zk, zv, length = inputs(b, t, rank, g)
                for x in (q, zk, zv, length):
                    torch._dynamo.mark_static_address(x)   # as a StaticCache's tensors are: no copy per replay

                def unfused(q=q, zk=zk, zv=zv):
                    return layer._attend(q, zk, zv, None)

                def fused(q=q, zk=zk, zv=zv, length=length):
                    return fused_attention(layer, shared, q, zk, zv, length)
                with torch.inference_mode():
                    ref = ref_layer._attend(q.float(), zk.float(), zv.float(), None).reshape(b, -1)
                    out_u, out_f = unfused().reshape(b, -1), fused()
                    # a StaticCache's tail past the live length: garbage that must not count
                    tail = torch.cat([zk, 100 * torch.randn_like(zk[:, :, :200])], dim=2)
                    out_tail = fused_attention(layer, shared, q, tail,
                                               torch.cat([zv, 100 * torch.randn_like(zv[:, :, :200])], dim=2), length)
                    del tail
                    row = {"rank": rank, "B": b, "T": t, "fused_vs_fp32": errors(out_f, ref),
                           "unfused_vs_fp32": errors(out_u, ref), "fused_vs_unfused": errors(out_f, out_u),
                           "fused_with_tail_vs_fp32": errors(out_tail, ref)}
                    # what a full cache does in the same place: palu full and the baseline, same attention
                    k_full, v_full = (torch.randn(b, KV, t, HD, device=DEV, generator=g).to(DTYPE) for _ in range(2))
                    for x in (k_full, v_full):
                        torch._dynamo.mark_static_address(x)   # else each replay copies the whole cache in

                    def full(q=q, k=k_full, v=v_full):
                        return layout.grouped_decode_attention(q, k, v, None, layer.scaling)
                    unfused_c, fused_c, full_c = compiled(unfused), compiled(fused), compiled(full)
                    skips = cudagraph_skips()
                    row["fused_compiled_vs_fused"] = errors(fused_c().clone(), out_f)
                    row["ms_p50"] = {"unfused": p50_ms(unfused, args.iters, args.warmup),
                                     "unfused_compiled": p50_ms(unfused_c, args.iters, args.warmup),
                                     "fused": p50_ms(fused, args.iters, args.warmup),
                                     "fused_compiled": p50_ms(fused_c, args.iters, args.warmup),
                                     "full_compiled": p50_ms(full_c, args.iters, args.warmup)}
                    row["cudagraph_skips"] = cudagraph_skips() - skips
                    ms = row["ms_p50"]
                    row["speedup_compiled"] = round(ms["unfused_compiled"] / ms["fused_compiled"], 2)
                    row.update(floors(layer, b, t, ceilings, ms))
                emit("layer", **row)
                del q, zk, zv, k_full, v_full, unfused_c, fused_c, full_c
                torch.cuda.empty_cache()


def floors(layer, b, t, ceilings, ms):
    """Why a latent path can or cannot beat the full cache here: each path's least time at the
    measured ceilings. The latent paths read fewer bytes but must rebuild K (r x head_dim
    multiply-adds per KV head and position) before RoPE; the full cache reads K and V and rebuilds
    nothing. Achieved rates: the rebuild's FLOPs (latent paths) or the bytes (full) over the p50."""
    latent_bytes = b * t * (sum(layer.k_ranks) + sum(layer.v_ranks)) * 2
    full_bytes = b * t * KV * HD * 2 * 2
    rebuild_flops = 2 * b * t * sum(r * GS * HD for r in layer.k_ranks)
    gbps, tflops = ceilings["copy_GBps"], ceilings["gemm_TFLOPs"]
    floor = {"full": full_bytes / gbps / 1e6, "latent_bytes": latent_bytes / gbps / 1e6,
             "latent_rebuild": rebuild_flops / tflops / 1e9}
    return {"bytes": {"latent": latent_bytes, "full": full_bytes}, "rebuild_flops": rebuild_flops,
            "floor_ms": {k: round(v, 4) for k, v in floor.items()},
            "achieved": {"full_GBps": round(full_bytes / ms["full_compiled"] / 1e6, 1),
                         "fused_rebuild_TFLOPs": round(rebuild_flops / ms["fused_compiled"] / 1e9, 1),
                         "unfused_rebuild_TFLOPs": round(rebuild_flops / ms["unfused_compiled"] / 1e9, 1)}}


def once(args, shared):
    """Each path once, eagerly, at every (B, T): what a kernel profiler (ncu) needs and no more."""
    layer = make_layer(llama3_config(), args.ranks[0], shared)
    with torch.inference_mode():
        for b in args.batches:
            for t in args.lengths:
                q, zk, zv, length = inputs(b, t, args.ranks[0], torch.Generator(device=DEV).manual_seed(0))
                fused_attention(layer, shared, q, zk, zv, length)
                layer._attend(q, zk, zv, None)
                torch.cuda.synchronize()
                emit("once", B=b, T=t, rank=args.ranks[0])


def sweep(args, shared):
    config = llama3_config()
    layer = make_layer(config, args.ranks[0], shared)
    for b in args.batches:
        t = max(args.lengths)
        q, zk, zv, length = inputs(b, t, args.ranks[0], torch.Generator(device=DEV).manual_seed(0))
        with torch.inference_mode():
            ref = layer._attend(q, zk, zv, None).reshape(b, -1)
            for block_n in (32, 64, 128):
                for block_r in (32, 64):
                    for num_warps in (4, 8):
                        for waves in (1, 2, 4):
                            cfg = dict(block_n=block_n, block_r=block_r, num_warps=num_warps, waves=waves)

                            def fused(cfg=cfg):
                                return fused_attention(layer, shared, q, zk, zv, length, **cfg)
                            try:
                                err = errors(fused(), ref)["max_rel"]
                                emit("sweep", B=b, T=t, rank=args.ranks[0], **cfg, ms_p50=p50_ms(fused, args.iters, 5),
                                     max_rel_vs_unfused=err)
                            except Exception as e:   # e.g. out of shared memory at the largest blocks
                                emit("sweep", B=b, T=t, rank=args.ranks[0], **cfg,
                                     error=f"{type(e).__name__}: {e}"[:300])


def model_check(steps=32, prompt=512):
    """HF's own forward: position_ids reach the layers, a StaticCache's tail is masked by the live
    length, and the step captures in one CUDA graph."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    config = llama3_config(hidden=1024, layers=2, vocab=1000)
    base = LlamaForCausalLM(config).to(DEV, DTYPE).eval()
    for layer in base.model.layers:
        layer.self_attn.k_proj = palu_proj(config.hidden_size, 358)
        layer.self_attn.v_proj = palu_proj(config.hidden_size, 358)
    models, kernels = {}, {}
    for kind in ("unfused", "fused"):
        lm = SimpleNamespace(model=copy.deepcopy(base), device=torch.device(DEV))
        kernels[kind] = latent.enable(lm, kind)
        models[kind] = lm.model

    def step(model, ids, cache):
        return model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_ARG: cache}).logits[:, -1]
    step_c = compiled(step)
    ids = torch.randint(0, config.vocab_size, (2, prompt), device=DEV)
    caches = {"unfused": DynamicCache(config=config), "fused": DynamicCache(config=config),
              "fused_compiled": StaticCache(config=config, max_cache_len=prompt + steps + 64)}
    errs, agree = {"fused": [], "fused_compiled": []}, {"fused": 0, "fused_compiled": 0}
    with torch.inference_mode():
        logits = {k: step(models[k.split("_")[0]], ids, c) for k, c in caches.items()}
        for _ in range(steps):
            ref = logits["unfused"]
            for k in errs:
                errs[k].append(errors(logits[k], ref)["max_rel"])
                agree[k] += int(torch.equal(logits[k].argmax(-1), ref.argmax(-1)))
            tok = ref.argmax(-1, keepdim=True)
            logits = {"unfused": step(models["unfused"], tok, caches["unfused"]),
                      "fused": step(models["fused"], tok, caches["fused"])}
            torch.compiler.cudagraph_mark_step_begin()
            logits["fused_compiled"] = step_c(models["fused"], tok, caches["fused_compiled"]).clone()
    emit("model", kernels=kernels, steps=steps, max_rel_logit_err={k: max(v) for k, v in errs.items()},
         greedy_agreement={k: v / steps for k, v in agree.items()}, graphs=counters["stats"]["unique_graphs"],
         cudagraph_skips=cudagraph_skips())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--ranks", type=int, nargs="+", default=[358, 352])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--once", action="store_true", help="each path once per (B, T), for a kernel profiler")
    args = ap.parse_args()
    import triton
    warn = Warnings()
    logging.getLogger("torch").addHandler(warn)
    emit("env", torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0],
         gpu=torch.cuda.get_device_name(), unavailable=latent_kernel.unavailable_reason(DEV))
    rotary = LlamaRotaryEmbedding(llama3_config()).to(DEV)
    shared = latent_kernel.shared(rotary, max(args.lengths) + 256, DTYPE, DEV)
    emit("shared", sm_count=shared.sm_count, table=list(shared.cos.shape))
    if args.once:
        once(args, shared)
    elif args.sweep:
        sweep(args, shared)
    else:
        ceilings = roofline.measure_ceilings(DEV, DTYPE)
        emit("ceilings", **ceilings)
        layer_rows(args, shared, ceilings)
        model_check()
    emit("mutation_analysis", ok=not warn.seen, warnings=warn.seen[:3])


if __name__ == "__main__":
    main()
