"""The clock: CUDA events recorded in-stream, read after one host synchronization per region.

Synchronizing after every step would time the host round trip too, several times a step's own
length (docs/PERFORMANCE.md, design notes), so marks are only recorded inside a region.
Without CUDA the same interface uses a monotonic host clock.
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
            return event
        return time.perf_counter()

    def intervals_ms(self, marks):
        """Milliseconds between consecutive marks; the one host synchronization of the region."""
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]

    def trials(self, fn, warmup, iters, trials):
        """`trials` lists of `iters` per-call ms after `warmup` untimed calls; each trial is one region."""
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(trials):
            marks = [self.mark()]
            for _ in range(iters):
                fn()
                marks.append(self.mark())
            out.append(self.intervals_ms(marks))
        return out
