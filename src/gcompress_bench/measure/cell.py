"""A cell's harness: fresh peak-memory counters around it, and an out-of-memory error recorded as a skipped
cell with its reason instead of a crash."""
import time

import torch

from gcompress_bench.models import release_memory


def is_oom(e):
    """Out of memory on the GPU or the host (torch's CPU allocator raises a plain RuntimeError)."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e)


def run_cell(fn, device, **params):
    """Run one cell with fresh peak-memory counters; an OOM becomes a skipped record, not a crash."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    at_start = torch.cuda.memory_allocated(device) if cuda else None
    oom, t0 = None, time.perf_counter()
    try:
        record = {"status": "ok", **fn(**params)}
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        oom = str(e).splitlines()[0] if str(e) else "out of memory"
    if oom is not None:
        record = {"status": "skipped", "reason": "OOM", "error": oom}
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    record["memory"] = {
        "allocated_at_start_bytes": at_start,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "device_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
    }
    if oom is not None:
        release_memory(device)
    return record
