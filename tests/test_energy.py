"""Energy records: per-token arithmetic from a span and a prompt probe, and `not available` with its reason."""
import json
import time
from contextlib import contextmanager

import pytest
import torch

from gcompress_bench.measure import energy


class Counter(energy.Meter):
    """A meter with a counter, for the record arithmetic without a GPU (spans are given, not read)."""

    def __init__(self):
        self.reason = None


def span(joules, seconds, limits=(700.0, 700.0)):
    return {"joules": joules, "seconds": seconds, "power_limit_w": list(limits), "sm_clock_mhz": [1980, 1980]}


def test_no_cuda_device_says_why_and_never_zero():
    m = energy.Meter("cpu")
    assert m.reason == "no CUDA device (this run's device is cpu)"
    assert m.describe() == {"available": False, "reason": m.reason}
    with m.span() as s:
        pass
    assert s == {}
    assert energy.prompt_probe(m, lambda: None, 5.0) is None
    rec = energy.decode_record(m, s, None, 6, 0.3, 1, 4)
    assert rec == {"available": False, "joules_per_token": "not available", "mean_power_w": "not available",
                   "reason": m.reason}
    assert energy.prefill_record(m, s, 6, 32)["joules_per_forward"] == "not available"


def test_decode_energy_is_the_steps_share_per_token():
    # 6 generations of gen 65 at B4: 6 x 64 steps x 4 tokens; each prompt cost 0.5 J (probe), the span 30 J
    probe = {"reps": 10, "joules_per_prompt": 0.5, "span": span(5.0, 0.05)}
    rec = energy.decode_record(Counter(), span(30.0, 2.5), probe, 6, 1.92, 4, 65)
    assert rec["decode_joules"] == pytest.approx(27.0)
    assert rec["joules_per_token"] == pytest.approx(27.0 / (6 * 64 * 4))
    assert rec["joules_per_step"] == pytest.approx(27.0 / (6 * 64))
    assert rec["mean_power_w"] == pytest.approx(27.0 / 1.92) and rec["span_power_w"] == pytest.approx(12.0)


def test_prompts_costlier_than_the_span_is_not_a_result():
    probe = {"reps": 3, "joules_per_prompt": 6.0, "span": span(18.0, 0.1)}
    rec = energy.decode_record(Counter(), span(30.0, 2.5), probe, 6, 1.9, 1, 8)
    assert rec["available"] is False and rec["joules_per_token"] == "not available"
    assert rec["reason"].startswith("the prompts' energy (probe) exceeds the generations'")


def test_prefill_energy_per_forward_and_token():
    rec = energy.prefill_record(Counter(), span(12.0, 0.4), 30, 2048)
    assert rec["joules_per_forward"] == pytest.approx(0.4) and rec["joules_per_token"] == pytest.approx(0.4 / 2048)
    assert rec["mean_power_w"] == pytest.approx(30.0)


def test_prompt_probe_repeats_for_the_minimum_time():
    calls = []

    class PerCall(Counter):
        """Every prompt costs 0.2 J: the span's reading is the calls made inside it."""
        @contextmanager
        def span(self):
            out = {}
            yield out
            out.update(span(0.2 * len(calls), 0.01 * len(calls)))

    probe = energy.prompt_probe(PerCall(), lambda: calls.append(1), 20.0)
    assert probe["reps"] == len(calls) == energy.MIN_PROBE_S * 1e3 / 20.0 == 25
    assert probe["joules_per_prompt"] == pytest.approx(0.2)
    calls.clear()
    assert energy.prompt_probe(PerCall(), lambda: calls.append(1), 900.0)["reps"] == 1   # one long prompt suffices


def test_span_waits_for_the_counter_to_move_and_takes_off_the_idle_tail(monkeypatch):
    """A counter that moves every 100 ms at a constant 450 W (an H200's update period): a 250 ms span read at
    the reads' own moments could give 90 or 135 J; aligned to the updates, less the tail, it gives 112.5 J."""
    t0 = time.perf_counter()

    class NVML:
        NVML_CLOCK_SM = 0

        @staticmethod
        def nvmlDeviceGetTotalEnergyConsumption(h):
            return int((time.perf_counter() - t0) // 0.1) * 45_000   # mJ: 450 W x 100 ms per update

        nvmlDeviceGetEnforcedPowerLimit = staticmethod(lambda h: 700_000)
        nvmlDeviceGetClockInfo = staticmethod(lambda h, clock: 1980)

    meter = Counter()
    meter.nvml, meter.handle, meter.idle_w, meter.device = NVML, object(), 450.0, "cuda"
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    with meter.span() as s:
        time.sleep(0.25)
    assert s["seconds"] == pytest.approx(0.25, abs=0.05)
    assert s["joules"] == pytest.approx(450.0 * s["seconds"], abs=2.0)   # 112.5 J for exactly 250 ms
    assert 0 < s["tail_j"] <= 45.0 + 1.0
    assert s["power_limit_w"] == [700.0, 700.0] and s["sm_clock_mhz"] == [1980, 1980]


def test_h200_runs_report_energy_per_token_and_its_ratio(tmp_path):
    """The seed grid as measured on an H200 (data/evidence/h200/decode/seed-*): the comparison's energy table holds each
    variant's J/token and the ratio, recomputed here from the raw spans and prompt probes."""
    from gcompress_bench.results import comparison

    from .conftest import REPO
    base, palu = (REPO / "data/evidence/h200/decode" / r for r in ("seed-base", "seed-palu"))
    rep = comparison.write([base], {"palu": [palu]}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    raw = {r: json.loads((d / "raw.json").read_text())["cells"] for r, d in (("base", base), ("palu", palu))}
    assert len(rep["decode"]) == 6
    for row in rep["decode"]:
        per_token = {}
        for side, label in (("base", "baseline"), ("palu", "palu")):
            e, p = raw[side][row["cell"]]["energy"], raw[side][row["cell"]]["params"]
            steps = e["span"]["joules"] - e["generations"] * e["prompt_probe"]["joules_per_prompt"]
            per_token[side] = steps / (e["generations"] * (p["gen"] - 1) * p["batch"])
            assert row["values"][label]["energy"]["joules_per_token"] == pytest.approx(per_token[side])
            assert 0.3 < per_token[side] < 3.0 and e["span"]["power_limit_w"] == [700.0, 700.0]
        ratio = per_token["palu"] / per_token["base"]
        assert f"| {row['cell']} | {per_token['base']:.4g} |" in md and f"| {ratio:.3f} |" in md
    assert "## energy (decode: J per generated token" in md
