"""Quality suites: perplexity over fixed windows and lm-eval accuracy through the real harness."""
import pytest

from gcompress_bench import lmeval, ppl


@pytest.mark.ppl
def test_ppl(ppl_cell, bench_model, bench_record):
    rec = ppl.evaluate(bench_model, ppl_cell["corpus"], ppl_cell["seq_len"], ppl_cell["stride"])
    bench_record(ppl_cell, {"status": "ok", **rec})


@pytest.mark.lmeval
def test_lmeval(lmeval_cell, bench_model, bench_run, bench_record):
    g = bench_run.cfg["lmeval"]
    limit = None if g["limit"] == "all" else g["limit"]
    rec = lmeval.evaluate(bench_model, bench_run.lm_tasks[lmeval_cell["task"]], lmeval_cell["fewshot"], limit,
                          g["batch_size"])
    assert 1 <= rec["n"] == min(limit or rec["n_available"], rec["n_available"])
    bench_record(lmeval_cell, {"status": "ok", **rec})
