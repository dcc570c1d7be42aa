"""Timer fidelity, same process, same cell:
(a) prefill: the suite's p50 next to a bare CUDA-event loop around model(...);
(b) decode: a marked generation's summed intervals (what the suite records) next to the total of
    an unmarked generation timed by one outer event pair, in each decode mode; if the per-step
    events perturbed decoding, the two would differ.

    python tools/timer_fidelity.py --model llama3-8b-shape --batch 1 --seq-len 2048 --ctx 2048 --gen 64
"""
import argparse
import json
import sys

import torch

from gcompress_bench import config, models
from gcompress_bench.measure import env, timing
from gcompress_bench.results import stats
from gcompress_bench.suites import infer


class SilentClock(timing.Clock):
    """The clock's interface with no events: the decode loop runs as if unmeasured."""

    def __init__(self):
        super().__init__("cpu")

    def mark(self):
        return None

    def intervals_ms(self, marks):
        return [0.0] * (len(marks) - 1)

    host_ms = intervals_ms


def _outer_ms(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def check_prefill(lm, clock, batch, seq_len, iters):
    suite = infer.prefill(lm, clock, batch, seq_len, warmup=10, iters=iters, trials=1, seed=0)
    ids = infer.random_ids(lm.spec.config.vocab_size, batch, seq_len, 0, lm.device)
    with torch.inference_mode():
        for _ in range(10):
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)

        def loop():
            for _ in range(iters):
                lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        bare = _outer_ms(loop) / iters
    p50 = stats.describe(suite["samples_ms"]["latency"])["p50"]
    return {"check": "a: prefill p50 vs bare loop", "cell": f"B{batch}-S{seq_len}", "suite_p50_ms": p50,
            "bare_mean_ms": bare, "relative_difference": p50 / bare - 1}


@torch.inference_mode()
def check_decode(lm, clock, batch, ctx, gen, mode, reps):
    run, _, _ = infer.generator(lm.model, infer.random_ids(lm.spec.config.vocab_size, batch, ctx, 0, lm.device), gen, mode)
    for _ in range(3):   # compilation, CUDA-graph recording, warm-up
        run(clock)
    marked, unmarked = [], []
    for _ in range(reps):   # interleaved, so drift hits both alike
        marked.append(sum(run(clock)[1]))
        unmarked.append(_outer_ms(lambda: run(SilentClock())))
    m, u = stats.describe([marked])["p50"], stats.describe([unmarked])["p50"]
    return {"check": "b: sum of step intervals vs unmarked generation", "mode": mode,
            "cell": f"B{batch}-ctx{ctx}-gen{gen}", "marked_sum_p50_ms": m, "unmarked_total_p50_ms": u,
            "relative_difference": m / u - 1, "reps": reps}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3-8b-shape")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decode-mode", default="eager,compiled")
    args = ap.parse_args()
    cfg = config.resolve({})
    device = models.pick_device("cuda")
    lm = models.load(models.resolve(args.model, cfg["models"]), args.dtype, device)
    clock = timing.Clock(device)
    print(json.dumps({"env": env.capture(sys.argv, 0), "args": vars(args), "model": lm.describe()}), flush=True)
    print(json.dumps(check_prefill(lm, clock, args.batch, args.seq_len, args.iters)), flush=True)
    for mode in args.decode_mode.split(","):
        print(json.dumps(check_decode(lm, clock, args.batch, args.ctx, args.gen, mode, args.reps)), flush=True)


if __name__ == "__main__":
    main()
