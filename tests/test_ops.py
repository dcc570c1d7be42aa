"""The operator-family classification on real kernel names, and profiles against what ran."""
import pytest
import torch

from gcompress_bench import models
from gcompress_bench.config import resolve
from gcompress_bench.measure import ops
from gcompress_bench.measure.timing import Clock
from gcompress_bench.suites import infer

from .conftest import REPO

NAMES = [line.split("\t", 1) for line in (REPO / "tests/data/kernel_names.tsv").read_text().splitlines()
         if line and not line.startswith("#")]


def test_the_fixture_covers_every_family_and_the_libraries():
    families = {f for f, _ in NAMES}
    assert families == set(ops.FAMILY_NAMES)
    text = " ".join(n for _, n in NAMES)
    for seen in ("nvjet_sm90", "cutlass_80_tensorop", "cutlass_75_tensorop", "gemv2T_kernel", "gemvx::kernel",
                 "pytorch_flash::flash_fwd_kernel", "cudnn_generated_fort_native_sdpa", "triton_poi_fused",
                 "triton_red_fused", "CatArrayBatchedCopy", "aten::mm", "aten::_scaled_dot_product"):
        assert seen in text, seen


@pytest.mark.parametrize("family, name", NAMES, ids=[n[:60] for _, n in NAMES])
def test_each_real_name_falls_in_its_family(family, name):
    assert ops.family(name) == family


@pytest.mark.parametrize("name, want", [
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_tn_align2>"
     "(cutlass_80_tensorop_bf16_s16816gemm_bf16_128x256_64x3_tn_align2::Params)",
     {"library": "cutlass", "align": 2, "arch": "sm80", "tile": "128x256"}),
    ("void cutlass::Kernel2<cutlass_75_tensorop_bf16_s1688gemm_bf16_256x128_tn_align1>"
     "(cutlass_75_tensorop_bf16_s1688gemm_bf16_256x128_tn_align1::Params)",
     {"library": "cutlass", "align": 1, "arch": "sm75", "tile": "256x128"}),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT",
     {"library": "cublasLt nvjet", "align": None, "arch": "sm90", "tile": "256x128"}),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false>",
     {"library": "cublas gemv", "align": None, "arch": None, "tile": None}),
])
def test_gemm_kernel_names_say_the_path_taken(name, want):
    assert ops.gemm_kernel(name) == want


def test_non_gemm_names_have_no_gemm_facts():
    assert ops.gemm_kernel("triton_poi_fused__unsafe_view_mul_silu_8") is None
    assert ops.gemm_kernel("aten::mm") is None   # a CPU operator names no kernel


def test_summary_sums_per_iteration_against_a_hand_count():
    kernels = [("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT", 1.0, None)] * 4 + \
              [("triton_poi_fused__unsafe_view_mul_silu_8", 0.5, None)] * 2 + [("Memset (Device)", 0.25, None)]
    s = ops.summarize(kernels, iters=2, clock_ms=8.0)
    assert s["families_ms"] == {"attention": 0.0, "gemm": 2.0, "norm": 0.0, "elementwise": 0.5,
                                "data_movement": 0.125, "other": 0.0}
    assert (s["profiler_ms_per_iter"], s["clock_ms_per_iter"], s["coverage"]) == (2.625, 4.0, 2.625 / 4.0)
    assert [(k["name"][:5], k["count"], k["ms_per_iter"]) for k in s["top_kernels"]] == [
        ("nvjet", 2.0, 2.0), ("trito", 1.0, 0.5), ("Memse", 0.5, 0.125)]
    assert [g["library"] for g in s["gemm_kernels"]] == ["cublasLt nvjet"]


@pytest.fixture(scope="module")
def smol():
    cfg = resolve({})
    return models.load(models.resolve("smollm2-135m", cfg["models"]), "float32", torch.device("cpu"))


def test_a_cpu_profile_counts_each_linear_of_a_forward(smol):
    """30 layers x 7 linears + lm_head run as aten::mm, once per forward; the families add up to the
    profiler's total, and that stays within the host clock of the same iterations."""
    ids = infer.random_ids(smol.spec.config.vocab_size, 1, 16, 0, "cpu")
    with torch.inference_mode():
        prof = ops.profile(lambda: smol.model(input_ids=ids, use_cache=False, logits_to_keep=1), 3, "cpu")
    mm = [k for k in prof["top_kernels"] + prof["gemm_kernels"] if k["name"] == "aten::mm"]
    assert mm and mm[0]["count"] == 30 * 7 + 1 and mm[0]["family"] == "gemm"
    assert sum(prof["families_ms"].values()) == pytest.approx(prof["profiler_ms_per_iter"])
    assert 0.2 < prof["coverage"] <= 1.0 and prof["families_ms"]["gemm"] > 0
    assert prof["families_ms"]["attention"] > 0 and prof["iters"] == 3 and prof["unit"] == "CPU operator self time"


def test_a_decode_profile_is_per_step_after_the_prompt(smol):
    """Steps only: each runs the 211 linears once on one new token per row."""
    rec = infer.decode(smol, Clock("cpu"), batch=2, ctx=8, gen=6, warmup=0, iters=1, trials=1, seed=0, ops_profile=9)
    prof = rec["ops_profile"]
    assert prof["iters"] == 5   # at most gen - 1 steps: a static cache has room for no more
    assert {k: rec["busy"][k] for k in ("iters", "device_ms_per_iter", "unit")} == {
        "iters": 5, "device_ms_per_iter": prof["profiler_ms_per_iter"], "unit": prof["unit"]}
    assert 0 < rec["busy"]["profile_s"] < 60
    mm = next(k for k in prof["top_kernels"] if k["name"] == "aten::mm")
    assert mm["count"] == 211 and mm["shapes"][0] == [2, 576]
