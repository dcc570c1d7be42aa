import time

import pytest
import torch

from gcompress_bench.measure.timing import Clock

from .conftest import smollm2


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


@pytest.mark.system
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_no_host_sync_inside_a_measured_decode_region(monkeypatch, mode):
    """Every tensor-to-host read and every explicit synchronize is counted; none may happen
    between the first and the last mark of a generation (one sync follows, to read the events).
    compiled: the StaticCache loop with the step captured by torch.compile (aot_eager on CPU)."""
    from gcompress_bench.suites import infer

    lm = smollm2("float32", layers=2)   # where the loop reads the host does not depend on depth
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
        tokens, ms, _, _ = infer.generate(lm.model, ids, 6, clock, decode_step, cache)
    assert len(clock.calls_at_mark) == 7 and len(ms) == 6 and tokens.shape == (2, 6)
    if mode == "eager":
        assert clock.calls_at_mark == [0] * 7, calls
    else:   # HF's SDPA mask reads the static cache's offset once, in the eager prefill (TTFT); steps: none
        assert clock.calls_at_mark == [0] + [1] * 6 and calls == ["__bool__"], calls


@pytest.fixture(scope="module")
def smol():
    from gcompress_bench import models
    from gcompress_bench.config import resolve
    return models.load(models.resolve("smollm2-135m", resolve({})["models"]), "float32", torch.device("cpu"))


@pytest.mark.system
def test_a_planted_slow_host_is_flagged_and_a_clean_run_is_not(smol, monkeypatch):
    """A sleep inside every decode step is host time the device (here the CPU's operators) never sees:
    the cell's busy share falls under 80% and it is marked host-bound; the same cell without it is not.
    A sleep in the second trial only is host time that drifts between trials: the run summary warns."""
    from gcompress_bench.results import report
    from gcompress_bench.suites import infer
    cell = {"batch": 2, "ctx": 16, "gen": 6}

    def measured():   # on CPU the busy share comes only from an asked-for profile
        rec = infer.decode(smol, Clock("cpu"), **cell, warmup=1, iters=2, trials=2, seed=0, ops_profile=3)
        return report._cell_summary({"suite": "decode", "params": cell, "status": "ok", **rec}, None)
    clean = measured()
    unasked = infer.decode(smol, Clock("cpu"), **cell, warmup=0, iters=1, trials=1, seed=0)
    assert "busy" not in unasked and "ops_profile" not in unasked   # no profiling cost on CPU unless asked
    step, calls = infer.step, []

    def slow_step(*a, sleep_ms=60):
        calls.append(1)
        time.sleep(sleep_ms / 1e3)
        return step(*a)
    monkeypatch.setattr(infer, "step", slow_step)
    slow = measured()
    assert calls and clean["device_busy"] >= 0.8 and not clean["host_bound"], clean["device_busy"]
    assert slow["device_busy"] < 0.8 and slow["host_bound"], slow["device_busy"]
    assert slow["stats_ms"]["step"]["p50"] >= 60   # the sleep is inside the timed step (a shared machine's load
    # moves the compute part between runs, so no difference with the clean run is asserted)
    assert report.host_check({"clean": clean, "slow": slow}, 1000.0, 1100.0)["host_bound_cells"] == ["slow"]

    # a generation calls the step 6 times: warm-up and trial 1 (3 generations) run clean; then each step sleeps 3
    # clean steps' time, a drift of about 3 whatever the load on the machine stretches the steps to
    trial, extra = iter([0] * 18), 3 * clean["stats_ms"]["step"]["p50"]
    monkeypatch.setattr(infer, "step", lambda *a: slow_step(*a, sleep_ms=next(trial, extra)))
    drifted = measured()
    assert drifted["host_drift"] > 0.5, drifted["host_drift"]


def test_host_checks_warn_on_a_moved_launch_rate_and_drifting_cells():
    from gcompress_bench.results import report
    cells = {"a": {"host_drift": 0.5, "host_bound": True}, "b": {"host_drift": 0.1}, "c": {"host_drift": None}}
    quiet = report.host_check(cells, 1000.0, 1100.0)
    assert quiet["change"] == pytest.approx(0.1) and quiet["host_bound_cells"] == ["a"]
    assert quiet["drifting_cells"] == {"a": 0.5} and len(quiet["warnings"]) == 1
    assert report.host_check(cells, 1000.0, 700.0)["warnings"] == [
        "the host's launch rate moved -30% between session start (1000/s) and end (700/s): the host was shared or "
        "throttled; the host-bound cells (a) are affected; re-run them",
        "host time per iteration drifted between trials by more than 20% in a (50%): those cells are affected; "
        "re-run them"]
    assert report.host_check({"b": cells["b"]}, 1000.0, 700.0)["warnings"] == [
        "the host's launch rate moved -30% between session start (1000/s) and end (700/s): the host was shared or "
        "throttled; no cell here is host-bound, so their times are the device's"]
    assert report._drift([[10, 11, 12], [12, 13, 14]]) == pytest.approx(2 / 11) and report._drift([[5]]) is None
