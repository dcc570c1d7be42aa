"""The N-way report on real quick runs (smollm2-135m, CPU): baseline against palu, palu with the latent
cache, and asvd."""
import json
import shutil
import subprocess
import sys

import pytest
from matplotlib.image import imread

from gcompress_bench import cli
from gcompress_bench.measure import ops
from gcompress_bench.results import comparison, plots, report, stats
from gcompress_bench.results.store import load_raw
from gcompress_bench.suites import tables

from .conftest import REPO, ppl_ratio_cell

PNGS = ["prefill_latency.png", "prefill_speedup.png", "prefill_speedup_by_length.png", "decode_ms_per_token.png",
        "decode_speedup.png", "decode_speedup_by_length.png", "memory.png", "ppl.png", "accuracy.png",
        "distribution.png"]
LABELS = {"palu": "palu group_size=3", "palu-latent": "palu group_size=3 cache=latent", "asvd": "asvd ratio=0.95"}


@pytest.fixture
def group(quick_group):
    return quick_group


def plot_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/plot_llm_results.py"), *args], capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO / "src")}, cwd=REPO)


def _summary(group, run):
    return json.loads((group / "g" / run / "summary.json").read_text())["cells"]


@pytest.mark.system
def test_exp_group_report_is_complete_and_matches_the_summaries(group, tmp_path):
    proc = plot_tool("--exp-group", "g", "--results-root", str(group), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "rep"
    md = (out / "report.md").read_text()
    assert md.splitlines()[0] == f"# baseline vs {LABELS['asvd']}, {LABELS['palu']}, {LABELS['palu-latent']}"
    profiled = [f"time_went_{c}.png" for c in ("test_prefill_B1-S16", "test_prefill_B2-S16", "test_decode_B1-ctx16-gen4")]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PNGS + profiled)
    for png in PNGS:
        img = imread(out / png)
        assert 300 < img.shape[0] < 4000 and 300 < img.shape[1] < 4000, png
        assert img[..., :3].std() > 0.02, f"{png} looks blank"
    cells = {run: _summary(group, f"{run}-infer")["test_prefill[B1-S16]"] for run in ("baseline", "asvd", "palu",
                                                                                      "palu-latent")}
    lat = {run: c["stats_ms"]["latency"] for run, c in cells.items()}
    # a p50 the host set is marked so (tests share the cores, so any cell may be)
    p50 = {run: f"{lat[run]['p50']:.3f}" + (" **host-bound**" if c["host_bound"] else "") for run, c in cells.items()}
    base = lat["baseline"]
    raw = {run: load_raw(group / "g" / f"{run}-infer")["cells"]["test_prefill[B1-S16]"]["samples_ms"]["latency"]
           for run in cells}

    def speedup(r):   # the interval is the stats module's, itself tested against scipy's bootstrap
        ci = stats.ratio_interval(raw["baseline"], raw[r])
        return (f"{base['p50'] / lat[r]['p50']:.3f}x [{ci[0]:.3f}, {ci[1]:.3f}]" +
                (" no measurable difference" if ci[0] <= 1 <= ci[1] else ""))
    row = f"| test_prefill[B1-S16] | {p50['baseline']} | {base['p99']:.3f} | " + " | ".join(
        f"{p50[r]} | {lat[r]['p99']:.3f} | {speedup(r)}" for r in ("asvd", "palu", "palu-latent")) + " |"
    assert row in md
    assert "[its 95% bootstrap interval over trials and samples]" in md
    # the palu-latent OOM cell is shown as missing with its reason, never dropped; the other candidates ran it
    b2 = md.split("| test_prefill[B2-S16] |")[1].split("\n")[0].rstrip(" |").split(" | ")
    assert b2[8].startswith("skipped: OOM") and b2[10] == "missing" and "x [" in b2[4] and "x [" in b2[7]
    ppl = {run: load_raw(group / "g" / f"{run}-ppl")["cells"]["test_ppl[S256]"] for run in ("baseline", "asvd", "palu")}
    assert (f"| test_ppl[S256] | {ppl['baseline']['ppl']:.4f} | {ppl['asvd']['ppl']:.4f} | "
            f"{ppl_ratio_cell(ppl['baseline'], ppl['asvd'])} | {ppl['palu']['ppl']:.4f} | "
            f"{ppl_ratio_cell(ppl['baseline'], ppl['palu'])} | not in these runs | — |") in md
    for run in ("asvd", "palu"):   # one paired test per candidate
        acc = _summary(group, f"{run}-lmeval")["test_lmeval[piqa-0shot]"]
        assert f"| {acc['acc']:.4f} ± {acc['acc_stderr']:.4f} |" in md
    assert "exact McNemar" in md and "## PaLU compression" in md and "## ASVD compression" in md
    assert "every run on the same GPU" in md
    # the headline block of each candidate, recomputed here: the speedups' range, perplexity in %, accuracy in points
    head, rest = md.split("\n## Warnings\n", 1)
    assert "## Headline: each candidate against baseline (smollm2-135m, hf layout; 95% intervals;" in head
    assert rest.index("- WARNING:") < rest.index("## prefill latency")   # the warnings come before any table
    block = head.split(f"### {LABELS['palu']}\n", 1)[1].split("\n### ", 1)[0]
    cells = ("test_prefill[B1-S16]", "test_prefill[B2-S16]")
    samples = {run: load_raw(group / "g" / f"{run}-infer")["cells"] for run in ("baseline", "palu")}
    sp = sorted((_summary(group, "baseline-infer")[c]["stats_ms"]["latency"]["p50"] /
                 _summary(group, "palu-infer")[c]["stats_ms"]["latency"]["p50"],
                 stats.ratio_interval(*(samples[r][c]["samples_ms"]["latency"] for r in ("baseline", "palu"))), c)
                for c in cells)
    fmt = lambda x: f"{x[0]:.3f}x [{x[1][0]:.3f}, {x[1][1]:.3f}]" + (  # noqa: E731
        " no measurable difference" if x[1][0] <= 1 <= x[1][1] else "") + f" ({x[2]})"
    slower = sum(ci[1] < 1 for _, ci, _ in sp)
    assert (f"- prefill speedup (latency p50): {fmt(sp[0])} to {fmt(sp[1])}; of 2 cells, "
            f"{sum(ci[0] > 1 for _, ci, _ in sp)} measurably faster, {slower} measurably slower, "
            f"{2 - slower - sum(ci[0] > 1 for _, ci, _ in sp)} no measurable difference") in block.splitlines()
    lo, hi = stats.ppl_ratio_interval(ppl["baseline"]["window_nll"], ppl["palu"]["window_nll"],
                                      ppl["baseline"]["window_tokens"])
    r = ppl["palu"]["ppl"] / ppl["baseline"]["ppl"]
    assert (f"- perplexity test_ppl[S256]: {ppl['baseline']['ppl']:.3f} -> {ppl['palu']['ppl']:.3f}, "
            f"{100 * (r - 1):+.2f}% [{100 * (lo - 1):+.2f}%, {100 * (hi - 1):+.2f}%]") in block
    from scipy.stats import binomtest
    items = {run: {i["doc_id"]: i["acc"] for i in load_raw(group / "g" / f"{run}-lmeval")["cells"][
        "test_lmeval[piqa-0shot]"]["items"]} for run in ("baseline", "palu")}
    a, b = ([items[run][d] for d in items["baseline"]] for run in ("baseline", "palu"))
    only = (sum(x > y for x, y in zip(a, b)), sum(y > x for x, y in zip(a, b)))
    p = binomtest(min(only), sum(only), 0.5).pvalue if sum(only) else 1.0
    lo, hi = stats.paired_diff_interval(a, b)
    assert (f"- accuracy test_lmeval[piqa-0shot] acc: {100 * (sum(b) - sum(a)) / len(a):+.1f} points "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" + (" no measurable difference" if lo <= 0 <= hi else "") +
            f" (exact McNemar p {p:.3f}, n {len(a)}, chance 50.0%)") in block
    assert "- memory, one measurement per cell: peak allocated not measured (no CUDA device); KV cache 1.000x" in block
    # stand-in data is a warning of each column that used it, once, naming its runs
    assert (f"- WARNING: {LABELS['palu']} ran on stand-in data (palu-infer, palu-lmeval, palu-ppl): "
            "data/calibration.txt (FALLBACK: WikiText-2 train not in the HF cache)") in rest.splitlines()
    assert "Runs: baseline: baseline-infer, baseline-lmeval, baseline-ppl; asvd ratio=0.95: asvd-infer, " in md


@pytest.mark.system
def test_figures_hold_the_series_they_should(group):
    g = group / "g"
    rep, (b, p, a) = comparison.build([g / "baseline-infer", g / "baseline-ppl"],
                                      {"palu": [g / "palu-latent-infer"], "asvd": [g / "asvd-infer"]})
    fig = plots.prefill_latency({"baseline": b["cells"], "palu": p["cells"], "asvd": a["cells"]}, "m")
    lines = {c.get_label(): c.lines[0].get_ydata() for c in fig.axes[0].containers}
    assert set(lines) == {"baseline", "palu", "asvd"}          # one panel per batch: this is B=1
    assert {c.get_label() for c in fig.axes[1].containers} == {"baseline", "asvd"}   # its B=2 ran out of memory
    assert lines["palu"][0] == p["cells"]["test_prefill[B1-S16]"]["stats_ms"]["latency"]["p50"]
    heat = {r["cell"]: r["speedup"] for r in rep["prefill"]}
    assert heat["test_prefill[B2-S16]"]["palu"] is None and heat["test_prefill[B1-S16]"]["palu"] > 0
    assert heat["test_prefill[B2-S16]"]["asvd"] == pytest.approx(
        b["cells"]["test_prefill[B2-S16]"]["stats_ms"]["latency"]["p50"] /
        a["cells"]["test_prefill[B2-S16]"]["stats_ms"]["latency"]["p50"])
    dist = plots.distribution({"baseline": [1.0, 2.0, 3.0], "palu": [2.0, 4.0]}, "t", "ms")
    assert [t.get_text() for t in dist.axes[0].get_xticklabels()] == ["baseline", "palu"]


def test_more_than_six_series_are_split_into_panels():
    cells = {"test_prefill[B1-S16]": {"suite": "prefill", "status": "ok", "params": {"batch": 1, "seq_len": 16},
                                      "stats_ms": {"latency": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "std": 0.0}}}}
    fig = plots.prefill_latency({f"m{i}": cells for i in range(8)}, "m")
    assert [[c.get_label() for c in ax.containers] for ax in fig.axes] == [[f"m{i}" for i in range(6)], ["m0", "m6", "m7"]]


@pytest.mark.system
def test_cross_machine_comparison_is_flagged(group, tmp_path):
    other = tmp_path / "palu-infer"
    shutil.copytree(group / "g" / "palu-infer", other)
    env = json.loads((other / "env.json").read_text())
    env["gpu"], env["torch"] = "NVIDIA A100-SXM4-80GB", "2.4.0"
    (other / "env.json").write_text(json.dumps(env))
    rep, _ = comparison.build([group / "g" / "baseline-infer"], {"palu": [other]})
    assert any(w.startswith("runs differ in gpu: ['NVIDIA A100-SXM4-80GB', 'None']") for w in rep["warnings"])
    assert any(w.startswith("runs differ in torch:") for w in rep["warnings"])


@pytest.mark.system
@pytest.mark.parametrize("run, edit, line", [
    ("palu-ppl", lambda raw: raw.replace('"ppl": ', '"ppl": NaN, "was": ', 1),
     "raw.json: not strict JSON (NaN is not a JSON number); the file was edited or corrupted"),
    ("palu-ppl", lambda raw: raw.replace('"status": "ok"', '"status": 5', 1),
     "raw.json: cell 'test_ppl[S256]' has no status of ok, skipped, failed; not a gcompress-bench record"),
    ("palu-ppl", lambda raw: json.dumps({**json.loads(raw), "cells": {k: {**v, "ppl": "abc"} for k, v in
                                                                      json.loads(raw)["cells"].items()}}),
     "palu-ppl: raw.json, config.json or env.json is malformed (TypeError: unsupported operand type(s) for /: 'str' "
     "and 'float')"),   # its summary pairs it with its --baseline-run
    ("baseline-ppl", lambda raw: json.dumps({**json.loads(raw), "cells": {k: {**v, "ppl": "abc"} for k, v in
                                                                          json.loads(raw)["cells"].items()}}),
     "a run dir holds a value of the wrong type (TypeError: unsupported operand type(s) for /: 'float' and 'str')"),
])
def test_a_corrupt_run_is_one_line_and_no_figure(group, tmp_path, capsys, run, edit, line):
    """A raw.json edited or damaged after the run: the comparison stops with one line and exit 2, and writes
    nothing (no partial figure)."""
    root = _copy_group(group, tmp_path)
    raw = root / "g" / run / "raw.json"
    raw.write_text(edit(raw.read_text()))
    out = tmp_path / "rep"
    assert cli.compare(["--reference", str(root / "g/baseline-ppl"), "--candidate", f"palu={root / 'g/palu-ppl'}",
                        "--out", str(out)]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert line in err and not out.exists(), err


@pytest.mark.system
def test_an_out_that_is_a_file_and_a_missing_jobs_file_are_one_line(group, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert cli.compare(["--exp-group", "g", "--results-root", str(group), "--out", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gcompress-bench compare: --out: {tmp_path / 'f'} is a file; allowed: a folder (made if missing)"]
    assert cli.compare(["--exp-group", "g", "--results-root", str(group), "--jobs", str(tmp_path / "none.md")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gcompress-bench compare: --jobs: '{tmp_path / 'none.md'}' can't be read (No such file or directory); "
        "allowed: a markdown file"]


def test_truncated_raw_json_is_named(tmp_path):
    run = tmp_path / "g" / "r"
    run.mkdir(parents=True)
    (run / "raw.json").write_text('{"schema": 1, "variant": "baseline", "cells": {"x": {"st')
    proc = plot_tool("--reference", str(run), "--candidate", f"palu={run}", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"plot_llm_results: {run / 'raw.json'}: not valid JSON")
    proc = plot_tool("--candidate", str(run))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"plot_llm_results: --candidate: {str(run)!r} is not LABEL=RUN; e.g. --candidate palu=results/G/palu-infer"]
    proc = plot_tool("--exp-group", "none", "--results-root", str(tmp_path))
    assert proc.returncode == 2 and "need baseline runs and at least one candidate" in proc.stderr


def _copy_group(group, tmp_path, edit=None):
    """The shared runs in a new results root, plus a copy of one run with its config.json edited."""
    root = tmp_path / "results"
    shutil.copytree(group / "g", root / "g")
    if edit:
        name, new_name, change = edit
        shutil.copytree(root / "g" / name, root / "g" / new_name)
        cfg = json.loads((root / "g" / new_name / "config.json").read_text())
        change(cfg)
        (root / "g" / new_name / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.mark.system
def test_runs_of_different_settings_in_one_column_are_refused_naming_them(group, tmp_path):
    root = _copy_group(group, tmp_path, ("palu-ppl", "palu-ppl-r03", lambda c: c["palu"].update(ratio=0.3)))
    g = root / "g"
    proc = plot_tool("--reference", str(g / "baseline-ppl"), "--candidate", f"palu={g / 'palu-ppl'}",
                     str(g / "palu-ppl-r03"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and not (tmp_path / "rep").exists()
    assert proc.stderr.splitlines() == [
        "plot_llm_results: the palu runs differ in palu.ratio (0.7 in palu-ppl, 0.3 in palu-ppl-r03): one column "
        "would mix settings; allowed: runs of one setting per column (give each setting its own --candidate)"]
    # grouped by the exp group, the two settings are two labelled columns
    proc = plot_tool("--exp-group", "g", "--results-root", str(root), "--out", str(tmp_path / "rep2"))
    assert proc.returncode == 0, proc.stderr
    head = (tmp_path / "rep2" / "report.md").read_text().splitlines()[0]
    assert head == ("# baseline vs asvd ratio=0.95, palu group_size=3, palu group_size=3 cache=latent, "
                    "palu ratio=0.3 group_size=3")


@pytest.mark.system
def test_runs_of_different_models_are_refused(group, tmp_path):
    root = _copy_group(group, tmp_path)
    cfg = json.loads((root / "g/palu-ppl/config.json").read_text())
    (root / "g/palu-ppl/config.json").write_text(json.dumps({**cfg, "model": "meta-llama/Meta-Llama-3-8B-Instruct"}))
    proc = plot_tool("--reference", str(root / "g/baseline-ppl"), "--candidate", f"palu={root / 'g/palu-ppl'}")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "plot_llm_results: the runs measure different models (meta-llama/Meta-Llama-3-8B-Instruct, smollm2-135m); "
        "allowed: every column of one model"]


@pytest.mark.system
def test_timing_runs_of_different_layouts_are_refused_and_one_layout_is_named(group, tmp_path):
    root = _copy_group(group, tmp_path)
    args = ("--reference", str(root / "g/baseline-infer"), "--candidate", f"palu={root / 'g/palu-infer'}")
    proc = plot_tool(*args, "--out", str(tmp_path / "same"))
    assert proc.returncode == 0, proc.stderr
    assert ("- module layout of every timing run: **hf** (the modules as Transformers and the method built them)"
            in (tmp_path / "same/report.md").read_text().splitlines())
    cfg = json.loads((root / "g/palu-infer/config.json").read_text())
    (root / "g/palu-infer/config.json").write_text(json.dumps({**cfg, "layout": "fused"}))
    proc = plot_tool(*args, "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and not (tmp_path / "rep").exists()
    assert proc.stderr.splitlines() == [
        "plot_llm_results: the timing runs use different module layouts (fused, hf): the layout changes the answer; "
        "allowed: every timing column of one --layout"]


@pytest.mark.system
def test_a_repeated_cell_is_shown_once_and_its_repeats_named_with_their_spread(group, tmp_path):
    root = _copy_group(group, tmp_path)
    again = root / "g" / "palu-infer-again"
    shutil.copytree(root / "g" / "palu-infer", again)
    raw = json.loads((again / "raw.json").read_text())
    lat = raw["cells"]["test_prefill[B1-S16]"]["samples_ms"]["latency"]
    raw["cells"]["test_prefill[B1-S16]"]["samples_ms"]["latency"] = [[x * 1.25 for x in t] for t in lat]
    (again / "raw.json").write_text(json.dumps(raw))
    proc = plot_tool("--exp-group", "g", "--results-root", str(root), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    first = _summary(group, "palu-infer")["test_prefill[B1-S16]"]["stats_ms"]["latency"]["p50"]
    second = stats.describe(raw["cells"]["test_prefill[B1-S16]"]["samples_ms"]["latency"])
    assert second["p50"] == pytest.approx(1.25 * first)
    assert (f"- WARNING: {LABELS['palu']}: test_prefill[B1-S16] was measured in 2 runs (palu-infer: {first:.4g}, "
            f"palu-infer-again: {second['p50']:.4g} (shown)); spread {100 * (second['p50'] - first) / first:.1f}% "
            "between runs") in md.splitlines()
    assert f"{second['p50']:.3f}" in md.split("| test_prefill[B1-S16] |")[1].split("\n")[0]   # the table's is the last


@pytest.mark.system
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


@pytest.mark.system
def test_where_the_time_went_against_the_runs_profiles(group, tmp_path):
    """Each family's delta is the candidate's profile minus the reference's, as raw.json holds them; the family
    that lost the most is the largest delta; the table and the stacked bars are in the report."""
    g = group / "g"
    rep = comparison.write([g / "baseline-infer"], {"asvd": [g / "asvd-infer"]}, tmp_path / "rep")
    raw = {side: json.loads((g / f"{side}-infer" / "raw.json").read_text())["cells"] for side in ("baseline", "asvd")}
    rows = {r["cell"]: r for r in rep["time_went"]}
    assert set(rows) == {c for c in raw["baseline"] if raw["baseline"][c]["status"] == "ok"}
    md = (tmp_path / "rep" / "report.md").read_text()
    for cid, r in rows.items():
        base, cand = raw["baseline"][cid]["ops_profile"], raw["asvd"][cid]["ops_profile"]
        assert base["iters"] == cand["iters"] == 2 and base["classification"] == ops.CLASSIFICATION == r["classification"]
        delta = {f: cand["families_ms"][f] - base["families_ms"][f] for f in ops.FAMILY_NAMES}
        assert r["delta_ms"]["asvd"] == pytest.approx(delta)
        assert r["lost_most"]["asvd"] == max(delta, key=delta.get)
        assert f"| gemm | {base['families_ms']['gemm']:.3f} | {cand['families_ms']['gemm']:.3f} | {delta['gemm']:+.3f} |" in md
        png = tmp_path / "rep" / f"time_went_{cid.replace('[', '_').rstrip(']')}.png"
        assert png.name in rep["plots"] and imread(png).shape[0] > 100
    assert "## where the time went: test_decode[B1-ctx16-gen4] (ms per step, CPU operator self time, 2 profiled" in md


def test_profiles_sorted_by_different_tables_are_labelled():
    prof = lambda v, gemm: {"families_ms": {**dict.fromkeys(ops.FAMILY_NAMES, 1.0), "gemm": gemm},  # noqa: E731
                            **({"classification": v} if v else {})}
    cell = lambda p: {"suite": "prefill", "params": {"batch": 1}, "status": "ok", "ops_profile": p}  # noqa: E731
    ref = {"label": "baseline", "cells": {"c": cell(prof(None, 2.0))}}
    cand = {"label": "x", "cells": {"c": cell(prof("abc", 3.0))}}
    (row,) = comparison._time_went_rows(ref, [cand])
    assert row["classification"] == {"baseline": "unversioned", "x": "abc"} and row["delta_ms"]["x"]["gemm"] == 1.0


def test_a_host_bound_cell_is_marked_in_comparison_tables():
    ms = "{:.3f}".format
    assert tables.p50({"p50": 20.5, "host_bound": True}, ms) == "20.500 **host-bound**"
    assert tables.p50({"p50": 5.0, "host_bound": False}, ms) == "5.000"
    assert tables.p50({"missing": "not run"}, ms) == "not run"


def test_a_suite_split_into_pieces_costs_their_sum(tmp_path):
    """The full profile's infer_sweep as measured on an H200 in three pieces per variant (data/evidence/h200/full): the
    cost table sums the pieces' measured regions, recomputed here from every raw sample, over their walls."""
    full = REPO / "data/evidence/h200/full"
    pieces = {"baseline": ["base-dec", "base-pre", "base-pre-b8s4096"],
              "palu": ["palu-dec", "palu-pre", "palu-pre-b8s4096"]}
    rep = comparison.write([full / r for r in pieces["baseline"]], {"palu": [full / r for r in pieces["palu"]]},
                           tmp_path)
    md = (tmp_path / "report.md").read_text()
    total = 0.0
    for cost in rep["cost"]:
        raws = [json.loads((full / r / "raw.json").read_text()) for r in pieces[cost["label"]]]
        measured = sum(sum(map(sum, c["samples_ms"]["total" if "total" in c["samples_ms"] else "latency"]))
                       for raw in raws for c in raw["cells"].values() if c.get("status") == "ok") / 1e3
        wall = sum(raw["harness"]["wall_s"] for raw in raws)
        assert cost["runs"] == 3 and cost["wall_s"] == pytest.approx(wall)
        assert cost["parts_s"]["measured"] == pytest.approx(measured)
        assert cost["efficiency"] == pytest.approx(measured / wall) and 0.4 < measured / wall < 0.7
        assert (f"| {cost['label']} | complete | 3 | {measured:.1f} | {wall:.1f} | {100 * measured / wall:.0f}% | "
                f"{wall / 60:.1f} |") in md
        total += wall / 60
    assert len(rep["prefill"]) == 15 and len(rep["decode"]) == 12
    assert f"All columns: {total:.1f} device minutes." in md


def test_a_warm_compile_cache_shows_as_hits_and_a_shorter_compile():
    """Two H200 runs of the same three decode graphs (data/evidence/h200/compile-cache), the second after the first had
    filled inductor's cache: the summaries sum each run's per-cell hits and misses and first generations, and the
    run summary's compile line says so; the cached graphs decode at the same p50."""
    runs = {name: report.build_summary(REPO / "data/evidence/h200/compile-cache" / name) for name in ("cold", "warm")}
    for name, (hits, misses) in {"cold": (0, 3), "warm": (3, 0)}.items():
        s, raw = runs[name], json.loads((REPO / "data/evidence/h200/compile-cache" / name / "raw.json").read_text())
        compiled = [c["compile"] for c in raw["cells"].values()]
        assert s["compile"]["graph_cache"] == {"hits": hits, "misses": misses}
        assert s["compile"]["first_generations_s"] == pytest.approx(sum(c["first_generation_s"] for c in compiled),
                                                                     abs=1e-3)
        assert (f"inductor's graph cache (<tmp>/torchinductor_root): {hits} hits, {misses} misses"
                in report._markdown(s))
    assert runs["cold"]["compile"]["first_generations_s"] > 4 * runs["warm"]["compile"]["first_generations_s"]
    for cell, c in runs["cold"]["cells"].items():
        assert runs["warm"]["cells"][cell]["ms_per_token"] == pytest.approx(c["ms_per_token"], rel=2e-3)


def test_speedup_heatmaps_centre_on_one_unclipped_hatch_what_holds_one_and_name_their_columns():
    name = lambda k: f"ctx {k[0]} · gen {k[1]} · {k[2]}"  # noqa: E731
    col = (16, 4, "eager")
    fig = plots.speedup_heatmaps({"a": {(1, col): (2.0, (1.5, 2.5)), (2, col): (0.9, (0.8, 1.1))},
                                  "b": {(1, col): None, (2, col): (0.3, (0.25, 0.4))}}, "t", "batch B",
                                 "(ctx, gen, mode)", name)
    a, b = fig.axes[:2]
    assert [t.get_text() for t in a.get_xticklabels()] == ["ctx 16 · gen 4 · eager"]
    norm = a.images[0].norm   # log scale, centred on 1.0, reaching the most extreme cell (0.3x), not clipped
    assert (norm.vmin, norm.vmax) == (pytest.approx(0.3), pytest.approx(1 / 0.3)) and norm(1.0) == pytest.approx(0.5)
    assert norm(2.0) - 0.5 == pytest.approx(0.5 - norm(0.5))
    assert [p.get_hatch() for p in a.patches] == ["///"] and len(b.patches) == 0   # only 0.9x [0.8, 1.1] holds 1
    assert [t.get_text() for t in a.texts] == ["2.00x\n[1.50, 2.50]", "0.90x\n[0.80, 1.10]"]
    assert [t.get_text() for t in b.texts] == ["missing", "0.30x\n[0.25, 0.40]"]
    assert fig.axes[2].get_yticklabels()[0].get_text().endswith("x")


def test_accuracy_figure_draws_paired_differences_against_zero_and_names_every_candidate():
    fig = plots.paired_differences([("acc", ["[piqa-0shot]", "[hs-0shot]"],
                                     {"palu": [(-0.1, (-0.3, 0.05)), None], "asvd": [None, (0.02, (0.01, 0.04))]})],
                                    "difference (points)")
    ax = fig.axes[0]
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_marker() == "o"] == [pytest.approx(-10),
                                                                                      pytest.approx(2)]
    bars = [c for c in ax.collections if c.get_segments()]   # the intervals, in points
    assert [tuple(b.get_segments()[0][:, 1]) for b in bars] == [pytest.approx((-30, 5)), pytest.approx((1, 4))]
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_marker() in ("None", "")][0] == 0   # the zero line
    assert [t.get_text() for t in ax.texts] == ["missing", "missing"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["palu", "asvd"]


def test_a_memory_panel_without_data_is_left_out_and_named():
    fig = plots.panels([(["B1"], {"base": [None], "palu": [None]}, "prefill: peak allocated", "MiB", None),
                        (["B1"], {"base": [0.8], "palu": [0.5]}, "decode: KV cache", "MiB", None)])
    assert [ax.get_title() for ax in fig.axes] == ["decode: KV cache"]
    assert fig.get_suptitle() == "no data in these runs: prefill: peak allocated"


def test_speedup_lines_draw_each_interval_against_a_line_at_one_with_every_candidate_named():
    rows = [{"params": {"batch": 1, "seq_len": n}, "speedup": {"palu": sp, "asvd": None},
             "speedup_ci": {"palu": ci, "asvd": None}} for n, sp, ci in ((16, 0.8, (0.7, 0.9)), (32, 1.2, (0.9, 1.6)))]
    fig = plots.speedup_lines(rows, ["palu", "asvd"], "seq_len", "t", "S")
    ax = fig.axes[0]
    (drawn,) = ax.containers
    assert list(drawn.lines[0].get_ydata()) == [0.8, 1.2]
    assert [tuple(seg[:, 1]) for seg in drawn.lines[2][0].get_segments()] == [(0.7, 0.9), (0.9, 1.6)]
    assert ax.get_yscale() == ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["16", "32"]
    assert any(list(ln.get_ydata()) == [1.0, 1.0] for ln in ax.get_lines())   # the line at 1.0
    assert all(t.get_text().endswith("x") for t in ax.get_yticklabels())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["palu", "asvd"]   # asvd named, though not drawn
