"""Quality suites: perplexity over fixed windows and lm-eval accuracy through the real harness."""
import pytest

from gcompress_bench import lmeval, ppl


@pytest.mark.ppl
def test_ppl(ppl_cell, bench_model, bench_record):
    rec = ppl.evaluate(bench_model, ppl_cell["corpus"], ppl_cell["seq_len"], ppl_cell["stride"])
    bench_record(ppl_cell, {"status": "ok", **rec})


@pytest.mark.lmeval
def test_lmeval(lmeval_cell, bench_model, bench_run, bench_record):
    task, source = bench_run.lm_tasks[lmeval_cell["task"]]
    g = bench_run.cfg["lmeval"]
    rec = lmeval.evaluate(bench_model, task, source, lmeval_cell["fewshot"], g["limit"], g["batch_size"])
    assert 1 <= rec["n"] <= g["limit"] and 0 <= rec["acc"] <= 1 and 0 <= rec["acc_norm"] <= 1
    bench_record(lmeval_cell, {"status": "ok", **rec})
