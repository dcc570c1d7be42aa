"""Dimension sweeps: one operator at the model's shapes, one dim stepped (no weights are loaded)."""
import pytest

from gcompress_bench import dims, infer


@pytest.mark.dims
def test_dims(dims_cell, bench_clock, bench_run, bench_record):
    g = bench_run.cfg["dims"]
    bench_record(dims_cell, infer.run_cell(dims.measure, bench_run.device, clock=bench_clock,
                                           config=bench_run.spec.config, dtype=bench_run.cfg["dtype"],
                                           dev=bench_run.device, seed=bench_run.cfg["seed"], warmup=g["warmup"],
                                           iters=g["iters"], trials=g["trials"], **dims_cell.params))
