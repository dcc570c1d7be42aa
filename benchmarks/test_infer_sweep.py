"""infer_sweep: prefill-only latency over (B, S) and greedy decode over (B, ctx, gen)."""
import pytest

from gcompress_bench import infer


def _measure(fn, suite, cell, bench_model, bench_clock, bench_meter, bench_run, **extra):
    knobs = {k: bench_run.cfg[suite][k] for k in ("warmup", "iters", "trials")}
    return infer.run_cell(fn, bench_model.device, lm=bench_model, clock=bench_clock, meter=bench_meter,
                          seed=bench_run.cfg["seed"], ops_profile=bench_run.cfg["ops_profile"], **cell.params, **knobs,
                          **extra)


@pytest.mark.prefill
def test_prefill(prefill_cell, bench_model, bench_clock, bench_meter, bench_run, bench_record):
    bench_record(prefill_cell, _measure(infer.prefill, "prefill", prefill_cell, bench_model, bench_clock, bench_meter,
                                        bench_run))


@pytest.mark.decode
def test_decode(decode_cell, bench_model, bench_clock, bench_meter, bench_run, bench_record):
    bench_record(decode_cell, _measure(infer.decode, "decode", decode_cell, bench_model, bench_clock, bench_meter,
                                       bench_run, inductor=bench_run.cfg["decode"]["inductor"]))
