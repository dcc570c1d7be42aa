"""Test plugin: the prefill cell B2-S16 runs out of GPU memory (a real torch OutOfMemoryError)."""
import torch

from gcompress_bench import infer

_prefill = infer.prefill


def _oom_at_b2(**kw):
    if kw["batch"] == 2:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return _prefill(**kw)


infer.prefill = _oom_at_b2
