"""Energy per token from the GPU's own energy counter (NVML), read around a cell's measured regions.

The counter (millijoules since the driver loaded) is read after a host synchronization at both ends of a
span, so the span holds exactly the work queued inside it; the synchronization sits outside the measured
regions, never between decode steps. The counter moves in steps, so both ends wait for it to move
(docs/PERFORMANCE.md, "Energy per token"). The power limit and the SM clock are read at both ends too: a cell
timed at a lowered limit or a throttled clock measures a different machine.

Where there is no counter (no CUDA device, no pynvml, a driver or GPU without it) every energy field is
`not available` with the reason, never 0: a zero would read as free.
"""
import math
import time
from contextlib import contextmanager

import torch

from gcompress_bench.fmt import NOT_AVAILABLE

MIN_PROBE_S = 0.5   # a prompt probe runs at least this long
IDLE_PROBE_S = 0.3  # the idle power is measured over this long when the meter opens
TICK_WAIT_S = 1.0   # the longest wait for the counter to move (a counter that never moves: the span is unaligned)
POLL_S = 2e-4


class Meter:
    def __init__(self, device):
        self.device, self.handle, self.nvml, self.idle_w = torch.device(device), None, None, None
        self.reason = self._open()

    def _open(self):
        if self.device.type != "cuda":
            return f"no CUDA device (this run's device is {self.device.type})"
        try:
            import pynvml
        except ImportError:
            return "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            props = torch.cuda.get_device_properties(self.device)
            uuid = getattr(props, "uuid", None)   # NVML numbers GPUs without CUDA_VISIBLE_DEVICES: match by UUID
            handle = (pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid is not None else
                      pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0))
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as e:
            return f"NVML: {e}"
        self.nvml, self.handle = pynvml, handle
        torch.cuda.synchronize(self.device)
        (mj_a, t_a) = self._tick()
        time.sleep(IDLE_PROBE_S)
        (mj_b, t_b) = self._tick()
        self.idle_w = (mj_b - mj_a) / 1e3 / (t_b - t_a)
        return None

    def _tick(self):
        """(mJ, host time) at the counter's next update. The counter moves in steps (every 100 ms on an H200,
        about 45 J at decode power, more than a short cell's differences); read at an update, it holds the
        energy up to that moment."""
        read = lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # noqa: E731
        first, t0 = read(), time.perf_counter()
        while time.perf_counter() - t0 < TICK_WAIT_S:
            now = read()
            if now != first:
                return now, time.perf_counter()
            time.sleep(POLL_S)
        return first, t0

    def _limits(self):
        n, h = self.nvml, self.handle
        return n.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3, n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)

    def describe(self):
        """For env.json: whether energy is measured in this run, and the device's limit at session start."""
        if self.reason:
            return {"available": False, "reason": self.reason}
        limit, sm = self._limits()
        return {"available": True, "counter": "nvmlDeviceGetTotalEnergyConsumption", "power_limit_w": limit,
                "sm_clock_mhz": sm, "idle_w": self.idle_w}

    @contextmanager
    def span(self):
        """Yields a dict that holds the span's joules, seconds, power limits and SM clocks when it ends; an
        empty one without a counter. The span starts at a counter update; it ends at the next update after
        the work, less that idle tail at the idle power measured when the meter opened (`tail_j`: the
        correction, and the bound of its error)."""
        out = {}
        if self.reason:
            yield out
            return
        torch.cuda.synchronize(self.device)
        limit_a, sm_a = self._limits()
        mj_a, t_a = self._tick()
        yield out
        torch.cuda.synchronize(self.device)
        t_end = time.perf_counter()
        mj_b, t_b = self._tick()
        limit_b, sm_b = self._limits()
        tail_j = (t_b - t_end) * self.idle_w
        out.update(joules=(mj_b - mj_a) / 1e3 - tail_j, seconds=t_end - t_a, tail_j=tail_j,
                   power_limit_w=[limit_a, limit_b], sm_clock_mhz=[sm_a, sm_b])


def unavailable(reason):
    return {"available": False, "joules_per_token": NOT_AVAILABLE, "mean_power_w": NOT_AVAILABLE, "reason": reason}


def prefill_record(meter, span, forwards, tokens):
    """Joules per forward (and per token) and mean power over a prefill cell's measured forwards."""
    if meter.reason:
        return {**unavailable(meter.reason), "joules_per_forward": NOT_AVAILABLE}
    return {"available": True, "joules_per_forward": span["joules"] / forwards,
            "joules_per_token": span["joules"] / (forwards * tokens), "mean_power_w": span["joules"] / span["seconds"],
            "span": span, "forwards": forwards}


def prompt_probe(meter, prompt, ms_per_prompt):
    """The energy of one prompt forward, from enough repeats to last MIN_PROBE_S: what a decode cell's
    generations spent before their first step. None without a counter."""
    if meter.reason:
        return None
    reps = max(1, math.ceil(MIN_PROBE_S * 1e3 / max(ms_per_prompt, 1e-3)))
    with meter.span() as span:
        for _ in range(reps):
            prompt()
    return {"reps": reps, "joules_per_prompt": span["joules"] / reps, "span": span}


def decode_record(meter, span, probe, generations, steps_s, batch, gen):
    """Joules per generated token of the decode steps, and their mean power: the generations' energy less
    their prompts' (measured by the probe), over the gen - 1 steps of every generation."""
    if meter.reason:
        return unavailable(meter.reason)
    if gen < 2:
        return unavailable("a generation of one token has no decode step")
    steps_j = span["joules"] - generations * probe["joules_per_prompt"]
    facts = {"span": span, "generations": generations, "prompt_probe": probe, "decode_joules": steps_j}
    if steps_j <= 0:
        return {**unavailable("the prompts' energy (probe) exceeds the generations': the counter moved too little "
                              "in this cell; run more iterations"), **facts}
    return {"available": True, "joules_per_token": steps_j / (generations * (gen - 1) * batch),
            "joules_per_step": steps_j / (generations * (gen - 1)), "mean_power_w": steps_j / steps_s,
            "span_power_w": span["joules"] / span["seconds"], **facts}
