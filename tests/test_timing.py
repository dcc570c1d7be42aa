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


SYNCS = ["item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_no_host_sync_inside_a_measured_decode_region(monkeypatch, mode):
    """Every tensor-to-host read and every explicit synchronize is counted; none may happen
    between the first and the last mark of a generation (one sync follows, to read the events).
    compiled: the StaticCache loop with the step captured by torch.compile (aot_eager on CPU)."""
    from gcompress_bench import infer, models
    from gcompress_bench.config import resolve

    lm = models.load(models.resolve("smollm2-135m", resolve({})["models"]), "float32", torch.device("cpu"))
    ids = infer.random_ids(49152, 2, 16, 0, "cpu")
    decode_step, cache = infer.step, None
    if mode == "compiled":
        decode_step, cache = infer.compiled_step("aot_eager"), infer.StaticCache(config=lm.model.config, max_cache_len=22)
        with torch.inference_mode():
            infer.generate(lm.model, ids, 6, Clock("cpu"), decode_step, cache)   # compile before counting
            cache.reset()
    calls = []

    def counted(name, fn):
        def wrapper(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        return wrapper
    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", counted("synchronize", torch.cuda.synchronize))

    class CountingClock(Clock):
        def __init__(self):
            super().__init__("cpu")
            self.calls_at_mark = []

        def mark(self):
            self.calls_at_mark.append(len(calls))
            return super().mark()

    clock = CountingClock()
    with torch.inference_mode():
        tokens, ms, _ = infer.generate(lm.model, ids, 6, clock, decode_step, cache)
    assert len(clock.calls_at_mark) == 7 and len(ms) == 6 and tokens.shape == (2, 6)
    if mode == "eager":
        assert clock.calls_at_mark == [0] * 7, calls
    else:   # HF's SDPA mask reads the static cache's offset once, in the eager prefill (TTFT); steps: none
        assert clock.calls_at_mark == [0] + [1] * 6 and calls == ["__bool__"], calls
