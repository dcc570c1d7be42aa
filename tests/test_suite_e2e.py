"""The pytest suite driven as users drive it: through the CLI, in a subprocess, on smollm2-135m."""
import json
import time

import numpy as np
import pytest

from gcompress_bench.results.stats import describe
from gcompress_bench.results.store import load_raw

from .conftest import TINY, run_cli

REQUIRED = ["config.json", "env.json", "raw.json", "summary.json", "run_summary.md", "pytest-report.json",
            "plots/prefill_latency.png", "plots/decode_ms_per_token.png"]


@pytest.mark.system
@pytest.mark.parametrize("variant", ["baseline", "palu", "asvd"])
def test_quick_infer_sweep_writes_a_complete_run(quick_group, variant):
    run, stdout = quick_group / "g" / f"{variant}-infer", (quick_group / "logs" / f"{variant}-infer.out").read_text()
    for name in REQUIRED:
        assert (run / name).stat().st_size > 0, name
    cfg, env = json.loads((run / "config.json").read_text()), json.loads((run / "env.json").read_text())
    raw, summary = json.loads((run / "raw.json").read_text()), json.loads((run / "summary.json").read_text())
    # config.json is the input, written once; what was measured of the model and the method is in raw.json
    assert cfg["variant"] == variant and cfg["prefill"]["iters"] == 3 and "model_facts" not in cfg
    model, facts = raw["model_facts"], raw["method_facts"]
    assert model["kv_heads"] == 3 and model["weights"] == "pretrained"
    delta = {"baseline": lambda: 0, "palu": lambda: facts["factor_params"] - facts["original_params"],
             "asvd": lambda: facts["params_kept"] - facts["params_original"]}[variant]()
    assert model["parameters"] == 134_515_008 + delta
    for key in ("torch", "transformers", "python", "host", "cpu", "git_commit", "git_dirty", "command", "seed"):
        assert key in env
    assert raw["timer"] == "host" and summary["timer"] == "host"
    ids = ["test_prefill[B1-S16]", "test_prefill[B2-S16]", "test_decode[B1-ctx16-gen4]"]
    assert list(raw["cells"]) == ids
    for cid in ids:
        rec, s = raw["cells"][cid], summary["cells"][cid]
        for metric, trials in rec["samples_ms"].items():
            assert len(trials) == 2
            flat = np.concatenate(trials)
            assert s["stats_ms"][metric] == describe(trials)
            assert s["stats_ms"][metric]["p99"] == pytest.approx(np.percentile(flat, 99))
    dec = raw["cells"]["test_decode[B1-ctx16-gen4]"]
    assert [len(t) for t in dec["samples_ms"]["step"]] == [3 * 3, 3 * 3]   # iters x (gen - 1) per trial
    assert [len(t) for t in dec["samples_ms"]["ttft"]] == [3, 3]
    for total, ttft, steps in zip(dec["samples_ms"]["total"][0], dec["samples_ms"]["ttft"][0],
                                  np.reshape(dec["samples_ms"]["step"][0], (3, 3))):
        assert total == pytest.approx(ttft + steps.sum())
    # 30 layers x (K, V) x 3 KV heads x 64 dims x (16 + 4 - 1) cached tokens x 4 bytes
    assert dec["kv_cache_bytes"] == 30 * 2 * 3 * 64 * 19 * 4
    assert dec["params"]["mode"] == "eager" and dec["compile"] is None and dec["kv_bytes_per_position"] == 30 * 2 * 3 * 64 * 4
    # rooflines: the ceilings are measured and recorded; achieved = (bytes or FLOPs) / p50 / ceiling
    ceil = env["ceilings"]
    assert ceil["copy_GBps"] > 0 and ceil["gemm_TFLOPs"] > 0 and ceil["dtype"] == "float32"
    weights = model["weight_bytes"]    # SmolLM2 ties its embedding: every weight is read
    assert dec["bytes_per_step"] == weights + 30 * 2 * 3 * 64 * 4 * 1 * (16 + 4 / 2)
    roof = summary["cells"]["test_decode[B1-ctx16-gen4]"]["roofline"]
    gbps = dec["bytes_per_step"] / (describe(dec["samples_ms"]["step"])["p50"] / 1e3) / 1e9
    assert roof["GBps"] == pytest.approx(gbps, abs=0.06)
    assert roof["pct_of_copy"] == pytest.approx(100 * gbps / ceil["copy_GBps"], abs=0.06)
    pre = summary["cells"]["test_prefill[B2-S16]"]["roofline"]
    assert pre["TFLOPs"] == pytest.approx(raw["cells"]["test_prefill[B2-S16]"]["flops"] / (
        describe(raw["cells"]["test_prefill[B2-S16]"]["samples_ms"]["latency"])["p50"] / 1e3) / 1e12, abs=0.006)
    # the decode step against its floors, from the recorded bytes and the measured copy ceiling
    brk = summary["cells"]["test_decode[B1-ctx16-gen4]"]["roofline_breakdown"]
    assert brk["weights_floor_ms"] == pytest.approx(weights / ceil["copy_GBps"] / 1e6)
    assert brk["kv_floor_ms"] == pytest.approx(dec["kv_bytes_per_step"] / ceil["copy_GBps"] / 1e6)
    assert brk["gap_ms"] == pytest.approx(describe(dec["samples_ms"]["step"])["p50"] - brk["weights_floor_ms"]
                                          - brk["kv_floor_ms"])
    # the device's busy share: its own time per iteration (the 2 iterations --ops-profile profiled) over the p50;
    # the host's time per step
    for cid, metric in zip(ids, ("latency", "latency", "step")):
        c = summary["cells"][cid]
        assert c["device_busy"] == pytest.approx(raw["cells"][cid]["busy"]["device_ms_per_iter"]
                                                 / c["stats_ms"][metric]["p50"])
        assert c["host_bound"] == (c["device_busy"] < 0.8) and raw["cells"][cid]["busy"]["iters"] == 2
        assert c["host_stats_ms"][metric] == describe(raw["cells"][cid]["host_samples_ms"][metric])
    assert dec["busy"]["device_ms_per_iter"] == dec["ops_profile"]["profiler_ms_per_iter"]   # one profile, both uses
    assert dec["ops_profile"]["iters"] == 2 and len(dec["host_samples_ms"]["step"][0]) == 9
    # harness efficiency: the measured regions (every prefill forward, every whole generation) over the wall time
    h = summary["harness"]
    measured = sum(sum(map(sum, raw["cells"][c]["samples_ms"]["latency"])) for c in ids[:2]) + \
        sum(map(sum, dec["samples_ms"]["total"]))
    assert h["parts_s"]["measured"] == pytest.approx(measured / 1e3)
    assert sum(h["parts_s"].values()) == pytest.approx(h["wall_s"]) and h["efficiency"] == pytest.approx(
        measured / 1e3 / h["wall_s"])
    assert 0 < h["efficiency"] < 1 and min(h["parts_s"].values()) >= -0.05
    assert summary["host"]["launches_per_s_start"] == ceil["launches_per_s"] > 0
    assert summary["host"]["launches_per_s_end"] == raw["launches_per_s_end"] > 0
    assert model["layout"] == "hf" and cfg["layout"] == "hf"   # the default: the modules as built
    # energy on a CPU: every field says why it is missing, none is a number
    why = "no CUDA device (this run's device is cpu)"
    assert env["energy"] == {"available": False, "reason": why}
    assert dec["energy"] == {"available": False, "joules_per_token": "not available", "mean_power_w": "not available",
                             "reason": why}
    assert raw["cells"][ids[0]]["energy"]["joules_per_forward"] == "not available"
    report = json.loads((run / "pytest-report.json").read_text())
    assert {t["nodeid"].split("::")[-1]: t["outcome"] for t in report["tests"]} == dict.fromkeys(ids, "passed")
    md = (run / "run_summary.md").read_text()
    assert f"(**{100 * h['efficiency']:.0f}%**)" in md
    # on CPU: no roofline, floors or busy share (the host runs the operators), and one line says so
    assert "## decode roofline" not in md and "device busy |" not in md and "TFLOP/s (% of matmul)" not in md
    assert ("- on CPU the roofline (TFLOP/s, GB/s), the decode floors and the device busy share are not shown: the "
            "host itself runs the operators, so they would mean nothing here") in md.splitlines()
    p50 = summary["cells"]["test_prefill[B1-S16]"]["stats_ms"]["latency"]["p50"]
    assert f"| test_prefill[B1-S16] | ok | {p50:.3f} |" in md
    assert f"- energy: not available ({why})" in md
    dec_row = next(line for line in md.splitlines() if line.startswith("| test_decode[B1-ctx16-gen4] | ok |"))
    assert "| not available | not available |" in dec_row
    assert "[3/3] test_decode[B1-ctx16-gen4] ok step p50" in stdout
    assert f"results in {run}" in stdout
    if variant == "palu":
        assert (facts["group_size"], facts["svd"], facts["ratio"]) == (3, "whiten", 0.7)
        assert facts["modules"]["model.layers.0.self_attn.k_proj"]["physical"] == [128]
        assert facts["kv_compression_logical"] == pytest.approx(1 / 3)
        assert "Paris" in facts["verification"]["generation"]
        assert "## PaLU compression" in md and "KV compression 1 - sum(r)/sum(gs*head_dim): logical 0.3333" in md
        assert facts["factors"] == "recomputed (whiten)" and "factors recomputed (whiten)" in md
        headline = "requested ratio 0.7 (KV cut 0.3000); effective KV cut 0.3333 (ranks kept 0.6667, mean rank 128.0"
        assert md.splitlines()[4].startswith(f"- palu: {headline}") and f"palu: {headline}" in stdout
        assert "palu: calibration on 8 x 512 tokens of " in stdout and "palu: layer 30/30 factored" in stdout
    elif variant == "asvd":
        assert (facts["ratio"], facts["alpha"], facts["alignment"]["policy"]) == (0.95, 0.5, "none")   # quick's ratio
        assert facts["params_kept_ratio"] <= 0.95 and facts["params_kept_ratio"] == pytest.approx(0.95, abs=0.002)
        ranks = [m["rank"] for m in facts["modules"].values() if m["rank"] is not None]
        assert len(facts["modules"]) == 30 * 7 and facts["factored"] == len(ranks) > 100
        assert facts["aligned_share"]["8"] == sum(r % 8 == 0 for r in ranks) / len(ranks) < 0.5   # irregular
        mod = facts["modules"]["model.layers.0.mlp.up_proj"]
        layer = "## ASVD compression" in md and f"| model.layers.0.mlp.up_proj | 1536 x 576 | {mod['rank'] or 'dense'} |"
        assert layer in md and md.splitlines()[4].startswith("- asvd: requested 0.95 of the parameters kept")
    else:
        assert facts is None and not [line for line in md.splitlines() if line.startswith("## ") and "compression" in line]


@pytest.mark.system
@pytest.mark.parametrize("kind, error", [
    ("cuda", "CUDA out of memory. Tried to allocate 20.00 GiB"),
    ("cpu", "DefaultCPUAllocator: can't allocate memory: you tried to allocate 17592186044416 bytes"),
])
def test_oom_cell_is_skipped_with_reason_and_the_grid_goes_on(quick_group, llm_run, kind, error):
    if kind == "cuda":   # the shared palu-latent run: its B2 prefill raises torch's OutOfMemoryError as CUDA does
        run = quick_group / "g" / "palu-latent-infer"
        stdout = (quick_group / "logs" / "palu-latent-infer.out").read_text()
    else:
        proc, (run,) = llm_run("--variant", "baseline", *TINY, "--", "-p", "tests.plugins.oom_cell",
                               env_extra={"GCB_TEST_OOM": kind})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stdout = proc.stdout
    raw = json.loads((run / "raw.json").read_text())
    oom = raw["cells"]["test_prefill[B2-S16]"]
    assert (oom["status"], oom["reason"]) == ("skipped", "OOM")
    assert error in oom["error"] and "memory" in oom
    assert "[2/3] test_prefill[B2-S16] skipped" in stdout
    assert raw["cells"]["test_decode[B1-ctx16-gen4]"]["status"] == "ok"
    md = (run / "run_summary.md").read_text()
    assert "| test_prefill[B2-S16] | skipped: OOM |" in md
    assert "- test_prefill[B2-S16]: skipped (OOM); left out of every statistic" in md
    outcomes = {t["nodeid"].split("::")[-1]: t["outcome"]
                for t in json.loads((run / "pytest-report.json").read_text())["tests"]}
    assert outcomes["test_prefill[B2-S16]"] == "skipped" and outcomes["test_decode[B1-ctx16-gen4]"] == "passed"


@pytest.mark.system
@pytest.mark.parametrize("sig, code, why", [("INT", 130, "SIGINT: Ctrl-C"),
                                            ("TERM", 143, "SIGTERM: a time limit (Slurm's) or a cancel")])
def test_a_signal_keeps_finished_cells_says_so_on_top_and_exits_128_plus_it_not_2(llm_run, sig, code, why):
    """2 means bad input; a run stopped by Ctrl-C or by SIGTERM (a Slurm time limit) keeps its cells, writes its
    summary with a banner and says so on stderr, with its own code (128 + the signal)."""
    proc, (run,) = llm_run("--variant", "baseline", *TINY, "--", "-p", "tests.plugins.kill_after_two",
                           env_extra={"GCB_TEST_SIGNAL": sig})
    assert proc.returncode == code, proc.stdout + proc.stderr
    raw = json.loads((run / "raw.json").read_text())
    assert list(raw["cells"]) == ["test_prefill[B1-S16]", "test_prefill[B2-S16]"]
    stop = raw["interrupted"]
    assert {k: stop[k] for k in ("signal", "cells_done", "cells")} == {"signal": f"SIG{sig}", "cells_done": 2,
                                                                      "cells": 3}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["not_run"] == ["test_decode[B1-ctx16-gen4]"]
    banner = f"**INTERRUPTED after 2 of 3 cells** ({why}, at {stop['at_utc']})"
    assert (run / "run_summary.md").read_text().splitlines()[:3] == [f"# Run {run.name}", "", banner]
    assert f"gcompress-bench: {banner.replace('**', '')}: {run}" in proc.stderr.splitlines()
    assert "- test_decode[B1-ctx16-gen4]: not run (the run was interrupted by SIG" + sig + ")" in \
        (run / "run_summary.md").read_text().splitlines()


@pytest.mark.system
def test_killed_run_keeps_every_finished_cell(llm_run):
    proc, (run,) = llm_run("--variant", "baseline", *TINY, "--", "-p", "tests.plugins.kill_after_two")
    assert proc.returncode == -9
    assert json.loads((run / "raw.json").read_text())["cells"] == {}   # the cells went to the cell log as they ended
    raw = load_raw(run)
    assert list(raw["cells"]) == ["test_prefill[B1-S16]", "test_prefill[B2-S16]"]
    assert all(c["status"] == "ok" for c in raw["cells"].values())
    assert not (run / "summary.json").exists()
    from gcompress_bench.results.report import summarize
    s = summarize(run)   # regenerated from raw.json alone
    assert s["not_run"] == ["test_decode[B1-ctx16-gen4]"]


def test_existing_run_id_is_refused_and_left_intact(llm_run):
    run = llm_run.root / "default" / "taken"
    run.mkdir(parents=True)
    (run / "raw.json").write_text('{"precious": true}')
    proc, _ = llm_run("--run-id", "taken")
    assert proc.returncode == 2
    assert "--run-id: 'taken' already exists" in proc.stderr
    assert (run / "raw.json").read_text() == '{"precious": true}' and len(list(run.iterdir())) == 1


def test_missing_hf_model_fails_fast_without_network(llm_run, tmp_path):
    start = time.monotonic()
    proc, runs = llm_run("--model", "meta-llama/Not-A-Real-Model-8B",
                         env_extra={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 2 and runs == []
    assert time.monotonic() - start < 30
    out = proc.stderr
    assert "model 'meta-llama/Not-A-Real-Model-8B' is not in the local HF cache" in out
    assert f"searched {tmp_path / 'hf' / 'hub'}" in out and "hf download meta-llama/Not-A-Real-Model-8B" in out


def test_synthetic_model_keeps_timing_cells_and_drops_quality_cells():
    proc = run_cli("pytest", "benchmarks", "--model", "llama3-8b-shape", "--profile", "full", "--co", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gcompress-bench: 5 ppl/lmeval/longctx cells deselected: llama3-8b-shape has synthetic weights" in proc.stdout
    assert "gcompress-bench: 945 dims cells deselected: they run only when -m names dims" in proc.stdout
    assert "gcompress-bench: 12 longctx cells deselected: they run only when -m names longctx" in proc.stdout
    assert "27/989 tests collected (962 deselected)" in proc.stdout
