"""Quality suites: perplexity over fixed windows, lm-eval accuracy through the real harness, and retrieval from
long contexts."""
import pytest

from gcompress_bench import infer, lmeval, longctx, ppl


@pytest.mark.ppl
def test_ppl(ppl_cell, bench_model, bench_record):
    bench_record(ppl_cell, infer.run_cell(ppl.evaluate, bench_model.device, lm=bench_model, corpus=ppl_cell.params["corpus"],
                                          seq_len=ppl_cell.params["seq_len"], stride=ppl_cell.params["stride"]))


@pytest.mark.lmeval
def test_lmeval(lmeval_cell, bench_model, bench_run, bench_record):
    g = bench_run.cfg["lmeval"]
    limit = None if g["limit"] == "all" else g["limit"]
    rec = infer.run_cell(lmeval.evaluate, bench_model.device, lm=bench_model,
                         task=bench_run.lm_tasks[lmeval_cell.params["task"]], fewshot=lmeval_cell.params["fewshot"], limit=limit,
                         batch_size=g["batch_size"], ruler_length=g.get("ruler_length"))
    assert rec["status"] != "ok" or 1 <= rec["n"] == min(limit or rec["n_available"], rec["n_available"])
    bench_record(lmeval_cell, rec)


@pytest.mark.longctx
def test_longctx(longctx_cell, bench_model, bench_run, bench_record):
    g = bench_run.cfg["longctx"]
    bench_record(longctx_cell, infer.run_cell(longctx.measure, bench_model.device, lm=bench_model, **longctx_cell.params,
                                              depths=g["depths"], items=g["items"], seed=bench_run.cfg["seed"],
                                              max_new_tokens=g["max_new_tokens"]))
