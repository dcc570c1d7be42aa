"""Test plugin: the prefill cell B2-S16 runs out of memory: a real torch OutOfMemoryError as CUDA raises it,
or, with GCB_TEST_OOM=cpu, a real host allocation that torch's CPU allocator refuses."""
import os

import torch

from gcompress_bench.suites import infer

_prefill = infer.prefill


def _oom_at_b2(**kw):
    if kw["batch"] == 2:
        if os.environ.get("GCB_TEST_OOM") == "cpu":
            torch.empty(2**44, dtype=torch.uint8)   # 16 TiB
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return _prefill(**kw)


infer.prefill = _oom_at_b2
