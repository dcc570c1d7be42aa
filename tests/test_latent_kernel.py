"""The fused latent decode kernel against the torch path, and how latent.enable chooses between them.

The kernel's tests run it in Triton's interpreter (CPU, numpy) in a subprocess: TRITON_INTERPRET is
read when a kernel is defined, so it must be set before latent_kernel is imported, and must not
leak into other tests. Whether it compiles and how fast it is on a GPU is the business of
tools/latent_kernel_bench.py.
"""
import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

from gcompress_bench import UsageError
from gcompress_bench.measure import layout
from gcompress_bench.methods.palu import latent, latent_kernel
from gcompress_bench.methods.palu.factors import PaluLinear

from .conftest import REPO

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _config(hd, layers=1, rope=None):
    return LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=hd, max_position_embeddings=64,
                       rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0})


def _palu(attn, config, gs, k_ranks, v_ranks):
    """k_proj/v_proj as PaluLinear with random factors, scaled so softmax is far from uniform."""
    out = config.head_dim * gs
    attn.k_proj = PaluLinear(config.hidden_size, k_ranks, out, None, torch.float32, torch.device("cpu"))
    attn.v_proj = PaluLinear(config.hidden_size, v_ranks, out, None, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        for name, p in attn.named_parameters():
            p.normal_(0, 2 / p.shape[1] ** 0.5 if name.startswith(("q_proj", "k_proj")) else 1 / p.shape[1] ** 0.5)


def _layer(hd, gs, k_ranks, v_ranks, dtype, seed):
    """One attention layer as the torch path and as the fused path, same weights."""
    torch.manual_seed(seed)
    config = _config(hd)
    attn = LlamaAttention(config, layer_idx=0)
    _palu(attn, config, gs, k_ranks, v_ranks)
    attn.to(dtype)
    rotary = LlamaRotaryEmbedding(config)
    shared = latent_kernel.shared(rotary, config.max_position_embeddings, dtype, "cpu", sm_count=8)
    return (latent.LatentAttention(attn, rotary, config), latent.LatentAttention(attn, rotary, config, shared),
            rotary, config)


class _Cache:
    """The latents of T slots; update() writes the new token at each row's slot, as a cache does."""

    def __init__(self, zk, zv, slots):
        self.zk, self.zv, self.slots = zk.clone(), zv.clone(), slots

    def update(self, zk, zv, layer_idx):
        for row, slot in enumerate(self.slots):
            self.zk[row, :, slot], self.zv[row, :, slot] = zk[row, :, 0], zv[row, :, 0]
        return self.zk, self.zv


def _decode_inputs(layer, rotary, config, b, t_cache, lengths, pos_rows, dtype, seed):
    """A decode step: the new token at position length-1 of each row, slots past it filled with
    large garbage (a StaticCache's tail must be masked, not merely small)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, 1, config.hidden_size, generator=g).to(dtype)
    zk = torch.randn(b, 1, t_cache, sum(layer.k_ranks), generator=g)
    zv = torch.randn(b, 1, t_cache, sum(layer.v_ranks), generator=g)
    live = torch.arange(t_cache)[None] < torch.tensor(lengths)[:, None]            # (b, T)
    zk, zv = (torch.where(live[:, None, :, None], z, 100 * z).to(dtype) for z in (zk, zv))
    position_ids = (torch.tensor(lengths) - 1)[:pos_rows, None]
    mask = None if min(lengths) == t_cache else live[:, None, None, :]
    return dict(hidden_states=hidden, position_embeddings=rotary(hidden, position_ids), attention_mask=mask,
                position_ids=position_ids), (zk, zv, [n - 1 for n in lengths])


def _run_layer(layer, inputs, cache):
    with torch.inference_mode():
        return layer(**inputs, cache=_Cache(*cache))[0].float()


def _err(a, b):
    return {"max_abs": (a - b).abs().max().item(), "ref_max": b.abs().max().item()}


# (b, gs, hd, T, live lengths, rows of position_ids, block_n, block_r): blocks of 16 make 3 splits
# of the 37 slots (the last one past a live length of 30) and 1-2 chunks of the ranks 13 and 20
LAYER_CASES = [
    (b, gs, hd, 37, [n] * b, pos_rows, 16, 16)
    for b, pos_rows in ((1, 1), (2, 1), (2, 2)) for gs in (2, 1) for hd in (16, 64) for n in (30, 37)
] + [(2, 1, 64, 37, [30, 37], 2, 16, 16),            # rows of different lengths
     (2, 1, 64, 37, [30, 30], 2, None, None)]        # the layer's own call: default blocks, one split


def _ranks(gs):
    return ([13], [20]) if gs == 2 else ([13, 20], [20, 13])


@torch.inference_mode()
def _interpreted():
    """Runs in the subprocess, under TRITON_INTERPRET=1: every case's error against the torch path."""
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    # Two gaps of triton 3.5's interpreter, not of the kernel: it turns 1-element arrays into loop
    # bounds with int(), which numpy >= 2.4 refuses, and it multiplies bf16 dot operands as their
    # uint16 storage (a GPU's dot takes bf16 in and accumulates in fp32, as fp32 operands do here).
    patch, dot = interp._patch_lang_tensor, interp.InterpreterBuilder.create_dot

    def patched(tensor):
        patch(tensor)
        tensor.__index__ = lambda self: int(np.asarray(self.handle.data).reshape(-1)[0])

    def dot_bf16(self, a, b, acc, *rest):
        if a.dtype == tl.bfloat16:
            a, b = self.cast_impl(a, tl.float32), self.cast_impl(b, tl.float32)
        return dot(self, a, b, acc, *rest)
    interp._patch_lang_tensor, interp.InterpreterBuilder.create_dot = patched, dot_bf16

    out = {}
    for i, (b, gs, hd, t, lengths, pos_rows, bn, br) in enumerate(LAYER_CASES):
        unfused, fused, rotary, config = _layer(hd, gs, *_ranks(gs), torch.float32, seed=i)
        inputs, cache = _decode_inputs(unfused, rotary, config, b, t, lengths, pos_rows, torch.float32, seed=i)
        ref = _run_layer(unfused, inputs, cache)
        if bn is None:   # the layer's own call
            out[f"layer{i}"] = _err(_run_layer(fused, inputs, cache), ref)
            continue
        x = inputs["hidden_states"]
        zk, zv = _Cache(*cache).update(fused.k_proj.VT(x)[:, None], fused.v_down(x)[:, None], 0)
        q = fused.q_proj(x).view(b, 1, 8, hd).transpose(1, 2)
        cos, sin = inputs["position_embeddings"]
        q = q * cos.unsqueeze(1) + latent._rotate_half(q) * sin.unsqueeze(1)
        attn = latent_kernel.decode_attention(
            q, zk, zv, fused.k_up, fused.k_meta, fused.shared.cos, fused.shared.sin,
            inputs["position_ids"][:, -1] + 1, fused.scaling, fused.v_ranks, fused.shared.sm_count,
            block_n=bn, block_r=br)
        out[f"layer{i}"] = _err(fused.o_proj(attn).float()[:, None], ref)

    # bf16: both paths against the torch path in fp32 on the same (bf16) weights and inputs, rel L2
    rel = {"fused": [], "unfused": []}
    for seed in range(4):
        unfused, fused, rotary, config = _layer(64, 1, [13, 20], [20, 13], torch.bfloat16, seed=seed)
        inputs, cache = _decode_inputs(unfused, rotary, config, 2, 37, [30, 30], 1, torch.bfloat16, seed=seed)
        ref = _run_layer(copy.deepcopy(unfused).float(), {k: _float(v) for k, v in inputs.items()},
                         [_float(c) for c in cache])
        for name, layer in (("fused", fused), ("unfused", unfused)):
            err = _run_layer(layer, inputs, cache) - ref
            rel[name].append((torch.linalg.norm(err) / torch.linalg.norm(ref)).item())
    out["bf16"] = rel

    out["model"] = _model_steps()
    return out


def _float(x):
    if isinstance(x, tuple):
        return tuple(_float(v) for v in x)
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


def _model_steps():
    """A 2-layer Llama (Llama-3 RoPE) through HF's own forward: prefill 9 tokens, then 6 greedy
    decode steps, fused path in a DynamicCache and in a StaticCache larger than the sequence,
    driven by the torch path's tokens; max |logit diff| per step."""
    torch.manual_seed(5)
    config = _config(16, layers=2, rope=LLAMA3_ROPE)
    model = LlamaForCausalLM(config).eval()
    for layer in model.model.layers:
        _palu(layer.self_attn, config, 1, [13, 20], [20, 13])
    rotary = model.model.rotary_emb
    shared = latent_kernel.shared(rotary, config.max_position_embeddings, torch.float32, "cpu", sm_count=8)
    unfused, fused = model, copy.deepcopy(model)
    for u, f in zip(unfused.model.layers, fused.model.layers):
        f.self_attn = latent.LatentAttention(f.self_attn, fused.model.rotary_emb, config, shared)
        u.self_attn = latent.LatentAttention(u.self_attn, rotary, config)
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    caches = [DynamicCache(config=config), DynamicCache(config=config), StaticCache(config=config, max_cache_len=30)]
    errs, same = [], []
    for _ in range(7):
        logits = [m(input_ids=ids, cache=c, use_cache=True).logits[:, -1]
                  for m, c in zip((unfused, fused, fused), caches)]
        errs.append([(x - logits[0]).abs().max().item() for x in logits[1:]])
        same.append(all(torch.equal(x.argmax(-1), logits[0].argmax(-1)) for x in logits[1:]))
        ids = logits[0].argmax(-1, keepdim=True)
    return {"errs": errs, "same": same, "ref_max": logits[0].abs().max().item(),
            "static_shape": list(caches[2].layers[0].keys.shape)}


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    code = "import json; from tests.test_latent_kernel import _interpreted; print(json.dumps(_interpreted()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.system
@pytest.mark.parametrize("case", range(len(LAYER_CASES)), ids=[
    f"b{c[0]}-gs{c[1]}-hd{c[2]}-len{'_'.join(map(str, c[4]))}-pos{c[5]}-blk{c[6] or 'default'}" for c in LAYER_CASES])
def test_interpreted_kernel_matches_the_torch_path_fp32(interpreted, case):
    """The layer's output (through the folded o_proj), fused vs torch path, fp32: irregular ranks,
    one and two groups, a cache longer than the live length (its garbage tail must not count), more
    than one split (one of them past the live length), rank and head dims that are not powers of 2."""
    e = interpreted[f"layer{case}"]
    assert e["ref_max"] > 1 and e["max_abs"] <= 5e-6 * e["ref_max"], e


@pytest.mark.system
def test_interpreted_kernel_bf16_no_worse_than_the_torch_path(interpreted):
    """bf16 rounds differently on the two paths (the fused one keeps rebuilt K, RoPE and scores in
    fp32): against fp32 math, the fused error (rel L2, mean of 4 draws) stays within the torch
    path's own bf16 error."""
    e = interpreted["bf16"]
    fused, unfused = (sum(e[k]) / len(e[k]) for k in ("fused", "unfused"))
    assert fused <= 1.25 * unfused and fused <= 1.5e-2, e


@pytest.mark.system
def test_interpreted_kernel_in_the_models_own_decode_loop(interpreted):
    """Through HF's forward: position_ids reach the layer, the StaticCache's unused tail is masked
    by the live length alone, and the greedy tokens agree with the torch path at every step."""
    m = interpreted["model"]
    assert m["static_shape"] == [2, 1, 30, 33]
    assert all(m["same"]), m
    assert max(max(step) for step in m["errs"]) <= 1e-5 * m["ref_max"], m


def _tiny_lm(gs=1, k_ranks=(13, 20), v_ranks=(16, 16)):
    torch.manual_seed(3)
    config = _config(16, layers=2)
    model = LlamaForCausalLM(config).eval()
    for layer in model.model.layers:
        _palu(layer.self_attn, config, gs, list(k_ranks), list(v_ranks))
    return SimpleNamespace(model=model, device=torch.device("cpu"))


def _todays_forward(m, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **_):
    """The latent layer's forward before the fused kernel, verbatim but for `self` (equal V ranks)."""
    b, t, _ = hidden_states.shape
    q = m.q_proj(hidden_states).view(b, t, m.heads, m.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q = q * cos.unsqueeze(1) + latent._rotate_half(q) * sin.unsqueeze(1)
    zk = m.k_proj.VT(hidden_states)[:, None]
    zv = m.v_down(hidden_states)[:, None]
    if cache is not None:
        zk, zv = cache.update(zk, zv, m.layer_idx)
    total = zk.shape[2]
    k = torch.cat([up(z) for up, z in zip(m.k_proj.U, zk[:, 0].split(m.k_ranks, dim=-1))], dim=-1)
    k = k.view(b, total, m.kv_heads, m.head_dim).transpose(1, 2)
    pos = torch.arange(total, device=k.device)[None]
    kcos, ksin = m.rotary(k, pos)
    k = k * kcos.unsqueeze(1) + latent._rotate_half(k) * ksin.unsqueeze(1)
    is_causal = t > 1 and attention_mask is None
    mask = attention_mask[:, :, :, :total] if attention_mask is not None else None
    outs = []
    for g, zvg in enumerate(zv.split(m.v_ranks, dim=-1)):
        heads = slice(g * m.gs * m.n_rep, (g + 1) * m.gs * m.n_rep)
        kg = k[:, g * m.gs:(g + 1) * m.gs]
        if t == 1:
            outs.append(layout.grouped_decode_attention(q[:, heads], kg, zvg, mask, m.scaling).unsqueeze(2))
        else:
            kg = kg.repeat_interleave(m.n_rep, dim=1)
            outs.append(F.scaled_dot_product_attention(q[:, heads], kg, zvg.expand(-1, kg.shape[1], -1, -1),
                                                       attn_mask=mask, is_causal=is_causal, scale=m.scaling))
    out = torch.cat(outs, dim=1).transpose(1, 2).reshape(b, t, -1)
    return m.o_proj(out), None


def test_cpu_falls_back_to_the_unfused_path_bit_for_bit():
    lm = _tiny_lm()
    assert latent.enable(lm) == "unfused"
    layer = lm.model.model.layers[1].self_attn
    assert all(x.self_attn.kernel == "unfused" for x in lm.model.model.layers)
    assert not dict(layer.named_buffers())          # nothing packed for a kernel that will not run
    rotary, config = lm.model.model.rotary_emb, lm.model.config
    with torch.inference_mode():
        for b, t_cache, lengths in ((2, 37, [30, 30]), (1, 37, [37])):
            inputs, cache = _decode_inputs(layer, rotary, config, b, t_cache, lengths, 1, torch.float32, seed=b)
            assert torch.equal(layer(**inputs, cache=_Cache(*cache))[0], _todays_forward(layer, **inputs,
                                                                                        cache=_Cache(*cache))[0])
        hidden = torch.randn(2, 5, config.hidden_size)
        pe = rotary(hidden, torch.arange(5)[None])
        assert torch.equal(layer(hidden, pe)[0], _todays_forward(layer, hidden, pe)[0])   # prefill
    assert latent.enable(_tiny_lm(), "unfused") == "unfused"


def test_unequal_v_ranks_per_group_in_the_torch_path():
    """Groups of different V rank (a rank file's): each group's heads keep their own width, in
    the folded o_proj's order; same logits as the model with K and V rebuilt in full."""
    lm = _tiny_lm(k_ranks=(13, 20), v_ranks=(20, 13))
    full = copy.deepcopy(lm.model)
    latent.enable(lm)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        caches = DynamicCache(config=full.config), DynamicCache(config=full.config)
        for _ in range(3):
            a, b = (m(input_ids=ids, cache=c, use_cache=True).logits[:, -1] for m, c in zip((full, lm.model), caches))
            assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()
            ids = a.argmax(-1, keepdim=True)


def test_fused_where_it_cannot_run_is_one_usage_error(monkeypatch):
    with pytest.raises(UsageError) as e:
        latent.enable(_tiny_lm(), "fused")
    assert str(e.value) == ("--palu-latent-kernel: 'fused' cannot run here: no CUDA device (the device is cpu); "
                            "allowed: auto, unfused")
    monkeypatch.setattr(latent_kernel, "triton", None)
    assert latent.choose_kernel("auto", torch.device("cuda")) == "unfused"
    with pytest.raises(UsageError) as e:
        latent.choose_kernel("fused", torch.device("cuda"))
    assert str(e.value) == ("--palu-latent-kernel: 'fused' cannot run here: triton is not installed; "
                            "allowed: auto, unfused")
    with pytest.raises(UsageError) as e:
        latent.enable(_tiny_lm(), "triton")
    assert str(e.value) == "--palu-latent-kernel: unknown value 'triton'; allowed: auto, fused, unfused"


def test_pack_lays_out_each_kv_heads_rows_and_the_group_offsets():
    us = nn.ModuleList(nn.Linear(r, 2 * 4, bias=False) for r in (3, 5))    # gs 2, head_dim 4
    up, meta = latent_kernel.pack(us, [6, 2], head_dim=4, n_rep=3)
    assert up.shape == (4, 5, 4)
    assert torch.equal(up[3, :5], us[1].weight[4:8].T) and torch.equal(up[1, :3], us[0].weight[4:8].T)
    assert not up[0, 3:].any()
    assert meta.tolist() == [[3, 0, 6, 0, 0], [5, 3, 2, 6, 36]]     # 2 KV heads x 3 query heads x rank 6


def test_bench_floors_show_the_rebuild_costs_about_what_the_full_cache_reads():
    """tools/latent_kernel_bench.py's floors, against a hand count for Llama-3-8B at rank 352 per group of 4 KV
    heads and the ceilings measured on the H200 with them: the K rebuild alone takes 93% of the full cache's read,
    so no latent kernel can be more than 1.07x faster there; the committed H200 file holds the same floors."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import latent_kernel_bench as bench
    finally:
        sys.path.pop(0)
    layer = SimpleNamespace(k_ranks=[352, 352], v_ranks=[352, 352])
    ceilings = {"copy_GBps": 4240.4, "gemm_TFLOPs": 801.23}
    ms = {"full_compiled": 1.0, "fused_compiled": 4.174, "unfused_compiled": 1.558}
    got = bench.floors(layer, 8, 32768, ceilings, ms)
    positions = 8 * 32768   # per position, two groups: (352 + 352) x 2 bytes each, K and V of 4 heads x 128 x 2 bytes
    assert got["bytes"] == {"latent": positions * 2 * 1408, "full": positions * 2 * 2048}
    assert got["rebuild_flops"] == positions * 2 * 360_448   # 352 x 512 multiply-adds per group
    full_ms, rebuild_ms = positions * 4096 / 4240.4e9 * 1e3, positions * 720_896 / 801.23e12 * 1e3
    assert got["floor_ms"]["full"] == pytest.approx(full_ms, abs=1e-4)
    assert got["floor_ms"]["latent_rebuild"] == pytest.approx(rebuild_ms, abs=1e-4)
    assert 1.07 < full_ms / max(rebuild_ms, positions * 2816 / 4240.4e9 * 1e3) < 1.08
    assert got["achieved"]["fused_rebuild_TFLOPs"] == pytest.approx(positions * 720_896 / 4.174e-3 / 1e12, abs=0.1)
    rows = [json.loads(line) for line in (REPO / "data/evidence/h200/decode/latent_kernel_floors.jsonl").read_text().splitlines()]
    h200 = {(r["B"], r["T"]): r for r in rows if r["kind"] == "layer"}
    assert h200[(8, 32768)]["floor_ms"] == got["floor_ms"] and len(h200) == 6


def test_the_kernels_defaults_are_the_h200_sweeps_fastest_at_b8():
    """decode_attention's default block sizes, warps and waves against the sweep committed from an H200
    (data/evidence/h200/decode/latent_kernel_sweep.jsonl, 36 configurations at each of B1/B8 x 8k/32k): the fastest
    at B8, within 8% of the fastest at B1, and at least 1.2x faster at B8 than the first defaults."""
    import inspect
    params = inspect.signature(latent_kernel.decode_attention).parameters
    keys = ("block_n", "block_r", "num_warps", "waves")
    default = tuple(params[k].default for k in keys)
    rows = [json.loads(line) for line in (REPO / "data/evidence/h200/decode/latent_kernel_sweep.jsonl").read_text().splitlines()]
    cells = {}
    for r in rows:
        cells.setdefault((r["B"], r["T"]), {})[tuple(r[k] for k in keys)] = r["ms_p50"]
    assert sorted(cells) == [(1, 8192), (1, 32768), (8, 8192), (8, 32768)]
    assert all(len(c) == 36 for c in cells.values())
    for (b, t), ms in cells.items():
        fastest = min(ms.values())
        if b == 8:
            assert ms[default] == fastest, (b, t)
            assert ms[(64, 64, 8, 2)] / ms[default] > 1.2
        else:
            assert ms[default] <= 1.08 * fastest, (b, t)
