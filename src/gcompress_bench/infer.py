"""infer_sweep cells: prefill-only forward passes and greedy decode through the suite's own loop.

The decode loop is plain: one forward over the prompt, then one forward per token with a
DynamicCache, greedy argmax kept on the device, EOS ignored, a clock mark after every step and
one host synchronization at the end of the generation.
"""
import gc
import inspect

import torch
from transformers import DynamicCache, LlamaForCausalLM

# transformers renamed `past_key_values` to `cache` (deprecated from 5.2x); accept both releases.
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def random_ids(vocab, batch, length, seed, device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def kv_cache_bytes(cache):
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


@torch.inference_mode()
def prefill(lm, clock, batch, seq_len, warmup, iters, trials, seed):
    """One iteration = one forward pass over batch x seq_len tokens, last position's logits only."""
    ids = random_ids(lm.spec.config.vocab_size, batch, seq_len, seed, lm.device)

    def forward():
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    for _ in range(warmup):
        forward()
    latency = []
    for _ in range(trials):
        marks = [clock.mark()]
        for _ in range(iters):
            forward()
            marks.append(clock.mark())
        latency.append(clock.intervals_ms(marks))
    return {"samples_ms": {"latency": latency}, "tokens": batch * seq_len}


def generate(model, ids, gen, clock):
    """Greedy generation of exactly `gen` tokens; returns tokens, per-interval ms and the cache."""
    cache = DynamicCache(config=model.config)
    marks = [clock.mark()]
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_ARG: cache})
    token = out.logits[:, -1:].argmax(-1)
    tokens = [token]
    marks.append(clock.mark())
    for _ in range(gen - 1):
        out = model(input_ids=token, use_cache=True, **{CACHE_ARG: cache})
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(token)
        marks.append(clock.mark())
    return torch.cat(tokens, dim=1), clock.intervals_ms(marks), cache


@torch.inference_mode()
def decode(lm, clock, batch, ctx, gen, warmup, iters, trials, seed):
    """One iteration = one whole generation: 1 time-to-first-token sample and gen-1 step samples."""
    ids = random_ids(lm.spec.config.vocab_size, batch, ctx, seed, lm.device)
    for _ in range(warmup):
        generate(lm.model, ids, gen, clock)
    ttft, step, total = [], [], []
    for _ in range(trials):
        t_ttft, t_step, t_total = [], [], []
        for _ in range(iters):
            tokens, ms, cache = generate(lm.model, ids, gen, clock)
            t_ttft.append(ms[0])
            t_step.extend(ms[1:])
            t_total.append(sum(ms))
        ttft.append(t_ttft)
        step.append(t_step)
        total.append(t_total)
    return {"samples_ms": {"ttft": ttft, "step": step, "total": total},
            "kv_cache_bytes": kv_cache_bytes(cache), "tokens_per_generation": batch * gen,
            "first_tokens": tokens[0, :8].tolist()}


def run_cell(fn, device, **params):
    """Run one cell with fresh peak-memory counters; an OOM becomes a skipped record, not a crash."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    oom = None
    try:
        record = {"status": "ok", **fn(**params)}
    except torch.OutOfMemoryError as e:
        oom = str(e).splitlines()[0] if str(e) else "out of memory"
    if oom is not None:
        record = {"status": "skipped", "reason": "OOM", "error": oom}
    record["memory"] = {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "device_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
    }
    if oom is not None:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return record
