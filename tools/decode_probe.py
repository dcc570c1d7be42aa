"""Where a compiled decode step's time goes: the step's p50, and the GPU kernel time of gen-1
steps by kind (torch.profiler) next to their wall time. CUDA only.

    python tools/decode_probe.py --batch 1 --ctx 2048 --out probe.jsonl
"""
import argparse
import itertools
import json
import re
import sys
import time
from collections import defaultdict

import torch

from gcompress_bench import config, env, infer, models, stats, timing

# first match wins: inductor's kernel names quote the ops they fuse ("..._to_copy_...") and
# PyTorch's memory-efficient attention is a cutlass kernel, so the more specific kinds go first
KINDS = [("inductor fused", r"^triton_"),
         ("attention", r"fmha|flash|attention|softmax|sdpa"),
         ("matmul", r"gemm|gemv|cublas|cutlass|nvjet|xmma|splitk"),
         ("copy", r"copy|memcpy|memset|cat_|elementwise_kernel")]


def kind(name):
    return next((k for k, pat in KINDS if re.search(pat, name, re.I)), "other")


def kernel_breakdown(model, ids, gen, static, decode_step):
    """GPU kernel time of gen-1 decode steps by kind (the prompt is prefilled before profiling),
    next to their wall time: kernel time short of wall time is the GPU idling between kernels."""
    from torch.profiler import ProfilerActivity, profile

    static.reset()
    token = infer.step(model, ids, static)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(gen - 1):
            token = decode_step(model, token, static)
        end.record()
        torch.cuda.synchronize()
    per_kind, per_name, count = defaultdict(float), defaultdict(float), 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kind[kind(e.name)] += e.device_time_total / 1e3 / (gen - 1)
            per_name[e.name[:100]] += e.device_time_total / 1e3 / (gen - 1)
            count += 1
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:10]
    return {"kernel_ms_per_step": {k: round(v, 4) for k, v in sorted(per_kind.items())},
            "top_kernels_ms_per_step": [[name, round(ms, 4), kind(name)] for name, ms in top],
            "kernel_ms_per_step_total": round(sum(per_kind.values()), 4),
            "kernels_per_step": round(count / (gen - 1), 1),
            "wall_ms_per_step": round(start.elapsed_time(end) / (gen - 1), 4)}


@torch.inference_mode()
def probe(lm, batches, ctxs, gen, reps, profile_cell):
    clock = timing.Clock(lm.device)
    decode_step = infer.compiled_step()
    for b in batches:
        for ctx in ctxs:
            ids = infer.random_ids(lm.spec.config.vocab_size, b, ctx, 0, lm.device)
            static = infer.StaticCache(config=lm.model.config, max_cache_len=ctx + gen)

            def run():
                static.reset()
                return infer.generate(lm.model, ids, gen, clock, decode_step, static)[1]
            t0 = time.perf_counter()
            run()
            first = time.perf_counter() - t0
            run()
            steps = [x for _ in range(reps) for x in run()[1:]]
            d = stats.describe([steps])
            rec = {"batch": b, "ctx": ctx, "gen": gen, "first_generation_s": round(first, 1),
                   "step_p50_ms": round(d["p50"], 4), "step_p90_ms": round(d["p90"], 4), "samples": len(steps)}
            if (b, ctx) == profile_cell:
                rec["profile"] = kernel_breakdown(lm.model, ids, gen, static, decode_step)
            print(json.dumps(rec), flush=True)
            yield rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3-8b-shape")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--ctx", default="2048")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile-cell", default="1,2048", help="B,ctx of the cell to profile")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = config.resolve({})
    lm = models.load(models.resolve(args.model, cfg["models"]), "bfloat16", models.pick_device("cuda"))
    batches, ctxs = [int(x) for x in args.batch.split(",")], [int(x) for x in args.ctx.split(",")]
    profile_cell = tuple(int(x) for x in args.profile_cell.split(","))
    header = {"env": env.capture(sys.argv, 0), "args": vars(args), "model": lm.describe()}
    for rec in itertools.chain([header], probe(lm, batches, ctxs, args.gen, args.reps, profile_cell)):
        with open(args.out, "a") as f:   # one record at a time: a time limit keeps what finished
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
