"""The baseline-vs-palu report on real quick runs of both variants (smollm2-135m, CPU)."""
import json
import shutil
import subprocess
import sys

import pytest
from matplotlib.image import imread

from gcompress_bench import comparison, plots

from .conftest import REPO, TINY, run_cli

PNGS = ["prefill_latency.png", "prefill_speedup.png", "decode_ms_per_token.png", "decode_speedup.png",
        "memory.png", "ppl.png", "accuracy.png", "distribution.png"]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    quality = ["--ppl-seq-len", "256", "--tasks", "piqa", "--fewshot", "0", "--limit", "4"]
    for variant in ("baseline", "palu"):
        oom = ["--", "-p", "tests.plugins.oom_cell"] if variant == "palu" else []
        proc = run_cli("gcompress_bench.llm_run", "--variant", variant, *TINY, "--out", str(root), "--exp-group", "g",
                       "--run-id", f"{variant}-infer", *oom)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for suite in ("ppl", "lmeval"):
            proc = run_cli("gcompress_bench.llm_eval", "--variant", variant, "--suite", suite, *quality,
                           "--out", str(root), "--exp-group", "g", "--run-id", f"{variant}-{suite}")
            assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def plot_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/plot_llm_results.py"), *args], capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO / "src")}, cwd=REPO)


@pytest.mark.slow
def test_exp_group_report_is_complete_and_matches_the_summaries(group, tmp_path):
    proc = plot_tool("--exp-group", "g", "--results-root", str(group), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "rep"
    md = (out / "report.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PNGS)
    for png in PNGS:
        img = imread(out / png)
        assert 300 < img.shape[0] < 3000 and 300 < img.shape[1] < 3000, png
        assert img[..., :3].std() > 0.02, f"{png} looks blank"
    summary = {v: json.loads((group / "g" / f"{v}-infer" / "summary.json").read_text())["cells"]
               for v in ("baseline", "palu")}
    b, p = summary["baseline"]["test_prefill[B1-S16]"], summary["palu"]["test_prefill[B1-S16]"]
    bl, pl = b["stats_ms"]["latency"], p["stats_ms"]["latency"]
    assert (f"| test_prefill[B1-S16] | {bl['p50']:.3f} | {bl['p90']:.3f} | {bl['p99']:.3f} | {pl['p50']:.3f} | "
            f"{pl['p90']:.3f} | {pl['p99']:.3f} | {bl['p50'] / pl['p50']:.3f}x |") in md
    d = summary["baseline"]["test_decode[B1-ctx16-gen4]"]
    assert f"| test_decode[B1-ctx16-gen4] | {d['stats_ms']['step']['p50']:.3f} |" in md
    # the palu OOM cell is shown as missing with its reason, never dropped
    assert "| test_prefill[B2-S16] |" in md and "skipped: OOM" in md.split("| test_prefill[B2-S16] |")[1].split("\n")[0]
    assert md.split("| test_prefill[B2-S16] |")[1].split("\n")[0].rstrip().endswith("missing |")
    ppl = {v: json.loads((group / "g" / f"{v}-ppl" / "summary.json").read_text())["cells"]["test_ppl[S256]"]["ppl"]
           for v in ("baseline", "palu")}
    assert f"| test_ppl[S256] | {ppl['baseline']:.4f} | {ppl['palu']:.4f} | {ppl['palu'] / ppl['baseline']:.4f} | True |" in md
    acc = json.loads((group / "g" / "palu-lmeval" / "summary.json").read_text())["cells"]["test_lmeval[piqa-0shot]"]
    assert f"| {acc['acc']:.4f} ± {acc['acc_stderr']:.4f} |" in md and "exact McNemar" in md
    assert "## PaLU compression" in md and "every run on the same GPU" in md


@pytest.mark.slow
def test_figures_hold_the_series_they_should(group):
    g = group / "g"
    rep, b, p = comparison.build([g / "baseline-infer", g / "baseline-ppl", g / "baseline-lmeval"],
                                 [g / "palu-infer", g / "palu-ppl", g / "palu-lmeval"])
    fig = plots.prefill_latency({"baseline": b["cells"], "palu": p["cells"]}, "m")
    lines = {c.get_label(): c.lines[0].get_ydata() for c in fig.axes[0].containers}
    assert set(lines) == {"baseline B=1", "baseline B=2", "palu B=1"}          # palu B=2 ran out of memory
    assert lines["palu B=1"][0] == p["cells"]["test_prefill[B1-S16]"]["stats_ms"]["latency"]["p50"]
    heat = {r["cell"]: r["speedup"] for r in rep["prefill"]}
    assert heat["test_prefill[B2-S16]"] is None and heat["test_prefill[B1-S16]"] > 0
    dist = plots.distribution({"baseline": [1.0, 2.0, 3.0], "palu": [2.0, 4.0]}, "t", "ms")
    assert [t.get_text() for t in dist.axes[0].get_xticklabels()] == ["baseline", "palu"]


@pytest.mark.slow
def test_cross_machine_comparison_is_flagged(group, tmp_path):
    other = tmp_path / "palu-infer"
    shutil.copytree(group / "g" / "palu-infer", other)
    env = json.loads((other / "env.json").read_text())
    env["gpu"], env["torch"] = "NVIDIA A100-SXM4-80GB", "2.4.0"
    (other / "env.json").write_text(json.dumps(env))
    rep, _, _ = comparison.build([group / "g" / "baseline-infer"], [other])
    assert any(w.startswith("runs differ in gpu: ['NVIDIA A100-SXM4-80GB', 'None']") for w in rep["warnings"])
    assert any(w.startswith("runs differ in torch:") for w in rep["warnings"])


def test_truncated_raw_json_is_named(tmp_path):
    run = tmp_path / "g" / "r"
    run.mkdir(parents=True)
    (run / "raw.json").write_text('{"schema": 1, "variant": "baseline", "cells": {"x": {"st')
    proc = plot_tool("--baseline", str(run), "--palu", str(run), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"plot_llm_results: {run / 'raw.json'}: not valid JSON")
    proc = plot_tool("--exp-group", "none", "--results-root", str(tmp_path))
    assert proc.returncode == 2 and "need at least one baseline and one palu run" in proc.stderr


def test_decode_table_puts_paths_side_by_side_with_the_summaries_numbers():
    """On the H200 long-profile run dirs kept in docs/ (baseline and palu: both modes, 16 cells;
    latent: compiled only, 8 cells): every decode cell of each run is a row, its numbers are the
    summary's, and cells a run did not reach are listed, not dropped."""
    from tools.decode_table import rows
    runs = [REPO / "docs/h200/long" / p for p in ("baseline", "palu", "latent")]
    table = {(key, name): cols for key, name, cols in rows(runs)}
    assert len(table) == 16 + 16 + 8
    summary = json.loads((runs[2] / "summary.json").read_text())
    cell = summary["cells"]["test_decode[B1-ctx32768-gen64-compiled]"]
    cols = table[(("compiled", 1, 32768, 64), "palu latent")]
    assert cols[0] == f"{cell['stats_ms']['step']['p50']:.2f}" and cols[2] == f"{cell['kv_cache_bytes'] / 2**20:.0f}"
    assert table[(("compiled", 8, 4096, 64), "palu latent")][0] == "not run (run interrupted)"
    assert (("eager", 1, 4096, 64), "palu latent") not in table
    full = table[(("compiled", 1, 32768, 64), "palu full")]
    assert int(cols[2]) / int(full[2]) == pytest.approx(352 / 512, rel=0.01)   # latents: Σr / Σ gs·head_dim


def _copy_group(group, tmp_path, edit=None):
    """The fixture's six runs in a new results root, plus a copy of one run with its config.json edited."""
    root = tmp_path / "results"
    shutil.copytree(group / "g", root / "g")
    if edit:
        name, new_name, change = edit
        shutil.copytree(root / "g" / name, root / "g" / new_name)
        cfg = json.loads((root / "g" / new_name / "config.json").read_text())
        change(cfg)
        (root / "g" / new_name / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.mark.slow
def test_runs_of_different_settings_on_one_side_are_refused_naming_them(group, tmp_path):
    root = _copy_group(group, tmp_path, ("palu-ppl", "palu-ppl-r03", lambda c: c["palu"].update(ratio=0.3)))
    proc = plot_tool("--exp-group", "g", "--results-root", str(root), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and not (tmp_path / "rep").exists()
    assert proc.stderr.splitlines() == [
        "plot_llm_results: the palu runs differ in palu.ratio (0.7 in palu-ppl, 0.3 in palu-ppl-r03): one column "
        "would mix settings; allowed: runs of one setting per side (choose them with --palu RUN ...)"]


@pytest.mark.slow
def test_baseline_and_palu_of_different_models_are_refused(group, tmp_path):
    root = _copy_group(group, tmp_path)
    cfg = json.loads((root / "g/palu-ppl/config.json").read_text())
    (root / "g/palu-ppl/config.json").write_text(json.dumps({**cfg, "model": "meta-llama/Meta-Llama-3-8B-Instruct"}))
    proc = plot_tool("--baseline", str(root / "g/baseline-ppl"), "--palu", str(root / "g/palu-ppl"))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "plot_llm_results: baseline and palu runs measure different models (meta-llama/Meta-Llama-3-8B-Instruct, "
        "smollm2-135m); allowed: both sides of one model"]


@pytest.mark.slow
def test_one_corrupt_run_dir_is_named_and_the_others_reported(group, tmp_path):
    root = _copy_group(group, tmp_path)
    bad = root / "g" / "palu-lmeval-broken"
    shutil.copytree(root / "g" / "palu-lmeval", bad)
    (bad / "raw.json").write_text((bad / "raw.json").read_text()[:300])
    proc = plot_tool("--exp-group", "g", "--results-root", str(root), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    (line,) = [w for w in proc.stderr.splitlines() if "skipped" in w]
    assert line.startswith(f"WARNING: skipped run dir {bad}: {bad / 'raw.json'}: not valid JSON")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"- WARNING: skipped run dir {bad}" in md and "| test_lmeval[piqa-0shot] | acc |" in md


def test_report_tool_names_a_raw_file_without_its_header(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "raw.json").write_text('{"cells": {}}')
    proc = subprocess.run([sys.executable, str(REPO / "tools/report.py"), str(run)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"report: {run / 'raw.json'}: lacks ['run_id', 'variant', 'model', 'timer']; not a complete gcompress-bench "
        "raw file"]
