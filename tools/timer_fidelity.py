"""Timer fidelity: the suite's prefill p50 next to a bare CUDA-event loop around model(...), same process.

    python tools/timer_fidelity.py --model llama3-8b-shape --batch 1 --seq-len 2048
"""
import argparse
import json

import torch

from gcompress_bench import config, infer, models, stats, timing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3-8b-shape")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    cfg = config.resolve({})
    device = models.pick_device("auto")
    lm = models.load(models.resolve(args.model, cfg["models"]), args.dtype, device)
    clock = timing.Clock(device)
    suite = infer.prefill(lm, clock, args.batch, args.seq_len, warmup=10, iters=args.iters, trials=1, seed=0)
    ids = infer.random_ids(lm.spec.config.vocab_size, args.batch, args.seq_len, 0, device)
    with torch.inference_mode():
        for _ in range(10):
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        end.record()
        end.synchronize()
    bare = start.elapsed_time(end) / args.iters
    p50 = stats.describe(suite["samples_ms"]["latency"])["p50"]
    print(json.dumps({"cell": f"B{args.batch}-S{args.seq_len}", "suite_p50_ms": p50, "bare_mean_ms": bare,
                      "relative_difference": p50 / bare - 1}))


if __name__ == "__main__":
    main()
