"""The dimension-sweep suite: its grid, cells, cliffs and table, and a quick `-m dims` run end to end."""
import copy
import json
import platform
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from gcompress_bench import UsageError, dimtable
from gcompress_bench.config import SUITES_FILE, resolve
from gcompress_bench.results.stats import describe
from gcompress_bench.suites import SUITES, dims, jobs

from .conftest import REPO

LLAMA3 = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128)
SMOLLM2_HIDDEN, SMOLLM2_HEADS, SMOLLM2_KV_HEADS = 576, 9, 3


def _pt(value, p50, kernels):
    return {"value": value, "p50_ms": p50, "p99_ms": p50, "kernels": kernels}


def test_cliffs_are_neighbours_more_than_the_threshold_apart():
    pts = [_pt(30, 1.0, ["a"]), _pt(31, 1.05, ["a"]), _pt(32, 1.5, ["b"]), _pt(33, 1.48, ["b"]), _pt(34, 1.0, ["a"])]
    # 30->31 is 5% and 32->33 is 1.4%; 31->32 rises 1.5/1.05 = 1.4286x; 33->34 falls to 1/1.48 = 0.6757x, which
    # is 48% measured against the faster side, so a step down counts as the same step up would
    assert dimtable.cliffs(pts) == [
        {"from": 31, "to": 32, "ratio": pytest.approx(1.5 / 1.05), "kernels_from": ["a"], "kernels_to": ["b"]},
        {"from": 33, "to": 34, "ratio": pytest.approx(1 / 1.48), "kernels_from": ["b"], "kernels_to": ["a"]}]
    assert [c["from"] for c in dimtable.cliffs(pts, threshold=0.45)] == [33]      # 0.4286 < 0.45 < 0.48
    assert dimtable.cliffs(pts, threshold=0.5) == [] and dimtable.cliffs(pts[:1]) == []
    assert [dimtable.alignment(v) for v in (358, 360, 352, 384, 336, 7)] == [None, 8, 32, 64, 16, None]


def test_a_summary_names_kernels_by_what_tells_them_apart():
    cutlass = ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_tn_align2>"
               "(cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_tn_align2::Params)")
    assert dims.kernel_short(cutlass) == "cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_tn_align2"
    assert dims.kernel_short("aten::mm") == "aten::mm"
    nvjet = "nvjet_sm90_tst_64x16_64x16_4x1_v_bz_TNT"
    cliff = {"kernels_from": [cutlass, "aten::mm"], "kernels_to": ["aten::mm", nvjet]}
    assert dims.kernel_change(cliff) == ("kernels dropped: cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_"
                                            "tn_align2; added: nvjet_sm90_tst_64x16_64x16_4x1_v_bz_TNT")
    assert dims.kernel_change({"kernels_from": ["a", "b"], "kernels_to": ["b", "a"]}) == "same kernels"


def test_ids_params_and_the_models_shapes():
    assert jobs()["dims"] == ("dims",) and SUITES["dims"].timed and SUITES["dims"].opt_in
    quick = SUITES["dims"].cells(resolve({})["dims"])
    ids = [c.id for c in quick]
    assert len(ids) == 2 * 9 + 2 * 9 + 5 and ids[:2] == ["lowrank-din64-dout32-r28-M1", "lowrank-din64-dout32-r29-M1"]
    assert ids[9] == "lowrank-din64-dout32-r28-M64" and ids[-1] == "sdpa-hd18-B1-S32"
    assert quick[0].params == {"op": "lowrank", "sweep": "r", "value": 28, "M": 1, "d_in": 64, "d_out": 32}
    assert quick[0].cost == 28 and quick[-1].cost == 18 * 32
    full = {c.id: c.params for c in SUITES["dims"].cells(resolve({"profile": "full"})["dims"])}
    assert len(full) == 97 * 4 + 129 * 4 + 41
    assert full["lowrank-r358-M2048"] == {"op": "lowrank", "sweep": "r", "value": 358, "M": 2048}
    assert full["gemm-n14336-M16384"] == {"op": "gemm", "sweep": "n", "value": 14336, "M": 16384}
    assert full["sdpa-hd107-B1-S2048"] == {"op": "sdpa", "sweep": "head_dim", "value": 107, "batch": 1, "seq": 2048}
    # dims the entry leaves out are Llama-3-8B's: d_in = hidden, d_out = 8 KV heads x 128
    assert dims.shape(full["lowrank-r358-M2048"], LLAMA3) == {"M": 2048, "d_in": 4096, "r": 358, "d_out": 1024}
    assert dims.shape({"op": "gemm", "sweep": "k", "value": 14331, "M": 16}, LLAMA3) == {"M": 16, "k": 14331, "n": 4096}
    assert dims.shape(full["sdpa-hd107-B1-S2048"], LLAMA3) == {
        "batch": 1, "seq": 2048, "heads": 32, "kv_heads": 8, "head_dim": 107}
    s = dims.shape(full["lowrank-r358-M2048"], LLAMA3)
    assert dims.flops("lowrank", s) == 2 * 2048 * 4096 * 358 + 2 * 2048 * 358 * 1024
    assert dims.bytes_moved("lowrank", s, 2) == 2 * (2048 * 4096 + 4096 * 358 + 358 * 1024 + 2 * 2048 * 358
                                                     + 2048 * 1024)
    assert resolve({"iters": "7"})["dims"]["iters"] == 7


def _with_dims(tmp_path, **change):
    suites = yaml.safe_load(SUITES_FILE.read_text())
    section = copy.deepcopy(suites["profiles"]["quick"]["dims"])
    section["ops"][0] = {**section["ops"][0], **change}
    section["ops"][0] = {k: v for k, v in section["ops"][0].items() if v is not None}
    suites["profiles"]["quick"]["dims"] = section
    path = tmp_path / "suites.yaml"
    path.write_text(yaml.safe_dump(suites))
    return {"suites_file": str(path)}


@pytest.mark.parametrize("change, message", [
    ({"op": "conv"}, "dims.ops[0].op: unknown value 'conv'; allowed: lowrank, gemm, sdpa"),
    ({"sweep": "n"}, "dims.ops[0].sweep: unknown value 'n' for lowrank; allowed: r"),
    ({"seq": [32]}, "dims.ops[0]: unknown key 'seq' for lowrank sweeping r; allowed: op, sweep, range, M, d_in, d_out"),
    ({"range": [36, 28, 1]}, "dims.ops[0].range: [36, 28, 1] is not allowed; allowed: [lo, hi, step], integers with "
                             "1 <= lo <= hi and step >= 1 (hi included)"),
    ({"range": [28, 36, 0]}, "dims.ops[0].range: [28, 36, 0] is not allowed; allowed: [lo, hi, step], integers with "
                             "1 <= lo <= hi and step >= 1 (hi included)"),
    ({"range": [0, 36, 1]}, "dims.ops[0].range: [0, 36, 1] is not allowed; allowed: [lo, hi, step], integers with "
                            "1 <= lo <= hi and step >= 1 (hi included)"),
    ({"range": None}, "dims.ops[0].range: None is not allowed; allowed: [lo, hi, step], integers with "
                      "1 <= lo <= hi and step >= 1 (hi included)"),
    ({"M": [1, 0]}, "dims.ops[0].M: [1, 0] is not allowed; allowed: a list of positive integers, each once"),
    ({"M": [64, 64]}, "dims.ops[0].M: [64, 64] is not allowed; allowed: a list of positive integers, each once"),
    ({"d_in": -64}, "dims.ops[0].d_in: -64 is not allowed; allowed: a positive integer"),
    ({"op": "sdpa", "sweep": "head_dim", "M": None, "d_in": None, "d_out": None, "seq": [32], "batch": [1],
      "heads": 9, "kv_heads": 2},
     "dims.ops[0]: heads 9 is not a multiple of kv_heads 2; allowed: heads a multiple of kv_heads (grouped-query "
     "attention)"),
    ({"op": "sdpa", "sweep": "head_dim", "M": None, "d_in": None, "d_out": None, "range": [14, 18, 1], "seq": [32],
      "batch": [1]}, "dims.ops[2]: cell sdpa-hd14-B1-S32 is also made by dims.ops[0]; allowed: each cell once"),
])
def test_impossible_grids_get_one_line(tmp_path, change, message):
    with pytest.raises(UsageError) as e:
        resolve(_with_dims(tmp_path, **change))
    assert str(e.value) == message


def test_iteration_overrides_are_checked_for_dims(tmp_path):
    suites = yaml.safe_load(SUITES_FILE.read_text())
    suites["profiles"]["quick"]["dims"]["ops"] = []
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suites))
    with pytest.raises(UsageError, match=r"^dims\.ops: \[\] is not allowed; allowed: a list of one or more operator "
                                         r"entries$"):
        resolve({"suites_file": str(tmp_path / "s.yaml")})
    suites["profiles"]["quick"]["dims"] = {**suites["defaults"]["dims"], "trials": 0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suites))
    with pytest.raises(UsageError, match=r"^--trials \(dims\): 0 is not allowed; it must be an integer >= 1$"):
        resolve({"suites_file": str(tmp_path / "s.yaml")})


def test_a_table_loads_from_its_run_dir_and_refuses_bad_files(tmp_path):
    good = {"device_name": "NVIDIA H200", "dtype": "bfloat16", "model": "m", "run_id": "r",
            "series": [{"op": "lowrank", "sweep": "r", "shape": {"d_in": 4096, "d_out": 1024}, "M": 2048,
                        "points": [_pt(358, 0.05, ["k"])]}]}
    (tmp_path / dimtable.TABLE_FILE).write_text(json.dumps(good))
    assert dimtable.load_table(tmp_path) == dimtable.load_table(tmp_path / dimtable.TABLE_FILE) == good
    expected = (f"allowed: a {dimtable.TABLE_FILE} written by a `-m dims` run (device_name, dtype, and series of op, "
                "sweep, shape and points of value and a finite, positive p50_ms), or the run dir that holds it")
    with pytest.raises(UsageError) as e:
        dimtable.load_table(tmp_path / "nothing")
    assert str(e.value) == f"{tmp_path / 'nothing'}: missing; {expected}"
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UsageError) as e:
        dimtable.load_table(bad)
    assert str(e.value) == f"{bad}: not readable JSON (JSONDecodeError); {expected}"
    for point in ({"value": "358", "p50_ms": 1}, {"value": 358, "p50_ms": float("nan")}, {"value": 358, "p50_ms": 0},
                  {"value": 358, "p50_ms": float("inf")}):   # a NaN would reach the method's facts and the raw log
        bad.write_text(json.dumps({**good, "series": [{**good["series"][0], "points": [point]}]}))
        with pytest.raises(UsageError) as e:
            dimtable.load_table(bad)
        assert str(e.value) == f"{bad}: malformed; {expected}", point
    with pytest.raises(UsageError) as e:
        dimtable.check_device(good, "cpu")
    assert str(e.value) == ("dims table: a table measured on 'NVIDIA H200' is not applied on "
                            f"{dimtable.device_name('cpu')!r}; allowed: a table measured on this device")


@pytest.fixture(scope="module")
def quick_dims_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-m", "dims", "--results-root", str(root),
                           "--run-id", "dims-e2e"], cwd=REPO, capture_output=True, text=True, timeout=600)
    return proc, root / "default" / "dims-e2e"


@pytest.mark.system
def test_quick_dims_run_records_every_cell_and_its_table(quick_dims_run):
    proc, run = quick_dims_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads((run / "raw.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    cells = raw["cells"]
    assert len(cells) == 41 and raw.get("model_facts") is None   # no model was loaded
    here = f"cpu: {platform.processor() or platform.machine()}"
    for cid, rec in cells.items():
        p, s = rec["params"], rec["shape"]
        tag = {"r": "r", "n": "n", "head_dim": "hd"}[rec["sweep"]]
        assert rec["status"] == "ok" and re.search(rf"-{tag}(\d+)-", cid).group(1) == str(rec["value"])
        assert rec["value"] == p["value"] == s[p["sweep"]]
        assert [len(t) for t in rec["samples_ms"]["latency"]] == [5, 5]
        st = summary["cells"][cid]["stats_ms"]["latency"]
        assert st == describe(rec["samples_ms"]["latency"]) and st["p50"] > 0
        assert rec["device_name"] == here and rec["profile"]["when"] == "after the timed region"
        if rec["op"] == "lowrank":
            assert (s["d_in"], s["d_out"]) == (64, 32) and "aten::mm" in rec["kernels"]
            assert rec["flops"] == 2 * s["M"] * 64 * s["r"] + 2 * s["M"] * s["r"] * 32
            assert rec["bytes"] == 4 * (s["M"] * 64 + 64 * s["r"] + s["r"] * 32 + 2 * s["M"] * s["r"] + s["M"] * 32)
        elif rec["op"] == "gemm":   # k is the model's hidden size: SmolLM2's 576
            assert s["k"] == SMOLLM2_HIDDEN and rec["flops"] == 2 * s["M"] * SMOLLM2_HIDDEN * s["n"]
            assert "aten::mm" in rec["kernels"]
        else:
            assert (s["heads"], s["kv_heads"], s["seq"], s["batch"]) == (SMOLLM2_HEADS, SMOLLM2_KV_HEADS, 32, 1)
            assert rec["flops"] == 2 * SMOLLM2_HEADS * 32 ** 2 * s["head_dim"]
            assert any("scaled_dot_product" in k for k in rec["kernels"])
        derived = summary["cells"][cid]
        assert derived["TFLOPs"] == pytest.approx(rec["flops"] / (st["p50"] / 1e3) / 1e12)
        assert derived["GBps"] == pytest.approx(rec["bytes"] / (st["p50"] / 1e3) / 1e9)
    table = dimtable.load_table(run)
    assert (table["device_name"], table["dtype"], table["model"], table["run_id"]) == (
        here, "float32", "smollm2-135m", "dims-e2e")
    assert [(s["op"], s.get("M"), s["shape"]) for s in table["series"]] == [
        ("lowrank", 1, {"d_in": 64, "d_out": 32}), ("lowrank", 64, {"d_in": 64, "d_out": 32}),
        ("gemm", 1, {"k": 576}), ("gemm", 64, {"k": 576}),
        ("sdpa", None, {"heads": SMOLLM2_HEADS, "kv_heads": SMOLLM2_KV_HEADS})]
    points = [(s["op"], pt["value"], pt["p50_ms"], pt["kernels"]) for s in table["series"] for pt in s["points"]]
    assert sorted(points) == sorted((c["op"], c["value"], summary["cells"][cid]["stats_ms"]["latency"]["p50"],
                                     c["kernels"]) for cid, c in cells.items())
    assert [pt["value"] for pt in table["series"][4]["points"]] == [14, 15, 16, 17, 18]
    dimtable.check_device(table, "cpu")
    with pytest.raises(UsageError, match="a table measured on 'NVIDIA H200' is not applied on"):
        dimtable.check_device({**table, "device_name": "NVIDIA H200"}, "cpu")
    md = (run / "run_summary.md").read_text()
    first = table["series"][0]["points"][4]   # r = 32
    assert "### lowrank over r (d_in=64, d_out=32; M=1)" in md
    assert f"| 32 | 32 | {first['p50_ms']:.4f} | {first['p99_ms']:.4f} | {first['kernels'][0]} |" in md
    assert sum(line.startswith("Cliffs: ") for line in md.splitlines()) == 5
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["dims_gemm.png", "dims_lowrank.png", "dims_sdpa.png"]
    assert "[41/41] test_dims[sdpa-hd18-B1-S32] ok latency p50" in proc.stdout


@pytest.mark.system
def test_a_run_without_m_dims_never_starts_the_sweep():
    """pytest benchmarks with no -m collects every cell; the dims cells are deselected, and said so."""
    default = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stdout + default.stderr
    assert "test_dims[" not in default.stdout and "test_prefill[B1-S32]" in default.stdout
    assert "gcompress-bench: 41 dims cells deselected: they run only when -m names dims" in default.stdout
    assert "gcompress-bench: 3 longctx cells deselected: they run only when -m names longctx" in default.stdout
