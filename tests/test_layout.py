"""The fused layout is the same model: its logits and greedy tokens against the modules as built."""
import copy

import pytest
import torch
from torch import nn

from gcompress_bench import UsageError, models
from gcompress_bench.measure import layout
from gcompress_bench.measure.timing import Clock
from gcompress_bench.methods.asvd.lowrank import LowRankLinear
from gcompress_bench.methods.palu.factors import GroupUp
from gcompress_bench.suites import infer

from .conftest import smollm2
from .test_latent import _compressed, lockstep

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def built():
    """SmolLM2's first two layers in fp32 as three methods build them: baseline, palu with a full cache, palu's
    latent cache."""
    full, lat, _ = _compressed("float32")
    base = smollm2("float32", layers=2).model
    return {"baseline": base, "palu": full, "palu-latent": lat, "palu-gs1": _compressed("float32", group_size=1)[0]}


def fused(model):
    out = copy.deepcopy(model)
    facts = layout.apply(out, "fused")
    assert facts["layout"] == "fused" and facts["layers"] == len(model.model.layers) == 2
    return out


@pytest.mark.parametrize("name", ["baseline", "palu", "palu-latent", "palu-gs1"])
def test_fused_layout_is_the_same_model(built, name):
    """Prefill and 8 decode steps in lockstep; no weight held twice (a step reads the same bytes). palu-gs1
    has three groups of one rank: their up-projections run as one batched product."""
    hf, fu = built[name], fused(built[name])
    if name == "palu-gs1":
        k_up = fu.model.layers[0].self_attn.qkv.rest1
        assert isinstance(k_up, GroupUp) and tuple(k_up.weight.shape) == (3, 64, 32)   # rank 44 of 64, rounded to 32
    assert models.weight_bytes(fu) == models.weight_bytes(hf)
    assert all(isinstance(m, layout.Fused) for layer in fu.model.layers for m in (layer.mlp.gate_up,
               getattr(layer.self_attn, "qkv")))
    errs, same, _, _ = lockstep(hf, fu, infer.random_ids(49152, 2, 20, 1, "cpu"), 8)
    assert max(errs) <= 1e-5 and all(same), errs


@pytest.mark.parametrize("name", ["baseline", "palu", "palu-latent"])
def test_tuned_decode_gives_the_eager_greedy_tokens_over_64_steps(built, name):
    """The tuned path (fused layout, StaticCache, the step under torch.compile: aot_eager on CPU) against the
    eager path as built (DynamicCache, plain forwards): the same 64 greedy tokens, in fp32."""
    hf, fu = built[name], fused(built[name])
    ids = infer.random_ids(49152, 2, 20, 7, "cpu")
    with torch.inference_mode():
        eager, _, _, _ = infer.generate(hf, ids, 64, Clock("cpu"))
        static = infer.StaticCache(config=fu.config, max_cache_len=20 + 64)
        tuned, _, _, _ = infer.generate(fu, ids, 64, Clock("cpu"), infer.compiled_step("aot_eager"), static)
    assert tuned.shape == (2, 64) and torch.equal(tuned, eager)


def test_two_stage_projections_fuse_their_first_stages(built):
    """An ASVD-style B·A projection stacks A with its neighbours and keeps B; the result is unchanged."""
    hf = copy.deepcopy(built["baseline"])
    attn, mlp = hf.model.layers[0].self_attn, hf.model.layers[0].mlp
    w = attn.q_proj.weight.detach()
    attn.q_proj = LowRankLinear(w, torch.eye(w.shape[0]), None)       # exact: B = I
    mlp.up_proj = LowRankLinear(mlp.up_proj.weight.detach()[:, :], torch.eye(mlp.up_proj.out_features), None)
    fu = fused(hf)
    assert fu.model.layers[0].self_attn.qkv.splits == [576, 192, 192]
    assert fu.model.layers[0].mlp.gate_up.rest1.weight.shape == (1536, 1536)   # B, kept
    assert models.weight_bytes(fu) == models.weight_bytes(hf)   # A's weight lives on only in the stacked GEMM
    errs, same, _, _ = lockstep(hf, fu, infer.random_ids(49152, 1, 12, 2, "cpu"), 4)
    assert max(errs) <= 1e-5 and all(same)


def test_a_projection_without_stages_is_refused(built):
    hf = copy.deepcopy(built["baseline"])
    hf.model.layers[1].self_attn.k_proj = nn.Sequential(hf.model.layers[1].self_attn.k_proj)
    with pytest.raises(UsageError, match=r"^--layout fused: a Sequential projection has no stages\(\) to stack; "
                                         r"allowed: --layout hf, or a projection that is an nn.Linear or defines "
                                         r"stages\(\)$"):
        layout.apply(hf, "fused")
