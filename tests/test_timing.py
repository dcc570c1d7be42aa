import time

import pytest
import torch

from gcompress_bench.timing import Clock


def test_host_clock_measures_sleeps():
    clock = Clock("cpu")
    assert clock.name == "host"
    marks = [clock.mark()]
    for ms in (20, 40):
        time.sleep(ms / 1e3)
        marks.append(clock.mark())
    a, b = clock.intervals_ms(marks)
    assert 20 <= a < 60 and 40 <= b < 80


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_clock_matches_a_bare_event_pair():
    clock = Clock("cuda")
    x = torch.randn(4096, 4096, device="cuda")
    marks = [clock.mark()]
    for _ in range(5):
        x @ x
        marks.append(clock.mark())
    ms = clock.intervals_ms(marks)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        x @ x
    end.record()
    end.synchronize()
    assert clock.name == "cuda_event" and len(ms) == 5
    assert sum(ms) == pytest.approx(start.elapsed_time(end), rel=0.1)
