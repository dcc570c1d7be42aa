"""The clock: CUDA events recorded in-stream, read after one host synchronization per region.

Synchronizing after every step would time the host round trip too, several times a step's own
length (docs/PERFORMANCE.md, design notes), so marks are only recorded inside a region.
Without CUDA the same interface uses a monotonic host clock.

Every mark also notes the host's own clock: the host time between marks is how long Python took to
issue the work. Next to the GPU's time it shows a host that falls behind (docs/PERFORMANCE.md,
"When the host sets the time").
"""
import time

import torch


class Clock:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.name = "cuda_event" if self.cuda else "host"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event, time.perf_counter()
        return time.perf_counter()

    def intervals_ms(self, marks):
        """Milliseconds between consecutive marks; the one host synchronization of the region."""
        if self.cuda:
            marks[-1][0].synchronize()
            return [a[0].elapsed_time(b[0]) for a, b in zip(marks, marks[1:])]
        return self.host_ms(marks)

    def host_ms(self, marks):
        """Host milliseconds between consecutive marks (the same as intervals_ms without CUDA)."""
        at = [m[1] for m in marks] if self.cuda else marks
        return [(b - a) * 1e3 for a, b in zip(at, at[1:])]

    def trials(self, fn, warmup, iters, trials):
        """(`trials` lists of `iters` per-call ms, the same calls' host ms) after `warmup` untimed calls;
        each trial is one region."""
        for _ in range(warmup):
            fn()
        out, host = [], []
        for _ in range(trials):
            marks = [self.mark()]
            for _ in range(iters):
                fn()
                marks.append(self.mark())
            out.append(self.intervals_ms(marks))
            host.append(self.host_ms(marks))
        return out, host
