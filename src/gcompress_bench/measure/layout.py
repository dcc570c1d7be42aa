"""Decode-friendly weight layouts that leave the model's function unchanged, applied to every method alike.

`--layout fused` stacks the projections that read the same input into one GEMM: Q, K and V (or their
first stages: PaLU's and ASVD's down-projections, the latent path's K/V latents) and the MLP's gate and
up. At batch 1 each of those is a matrix-vector product that reads its weight once; one launch over
the stacked weight reads the same bytes with fewer, larger kernels. Decode attention then goes through
`grouped_decode_attention`, which reads each cached K/V position once per KV head instead of once per
query head, as HF's SDPA path does under a static cache (it repeats K/V to the query heads first).
The latent path already attends that way, so with this layout every cache path attends alike.

`--layout hf` keeps the modules as HF Transformers and the compression method built them.
Quality suites always run the `hf` modules; the layout is for the timing suites.
"""
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from gcompress_bench import UsageError


def grouped_decode_attention(q, k, v, mask, scale):
    """One new token's attention without repeating K or V per query head. q (b, H, 1, D);
    k (b, Hk, T, D); v (b, Hv, T, Dv), Hv dividing Hk (one V latent per group); query head h reads
    KV head h // (H/Hk), HF's order; mask broadcastable to (b, 1, 1, T), bool (True = attend),
    additive, or None. Scores and softmax in fp32. Returns (b, H, Dv).

    The query heads sharing a KV head are the rows of one small product, and a group's heads
    multiply the V latent they share, so each cached position is read once. Repeating the rebuilt
    K per query head and expanding the V latent to every head before SDPA reads each position many
    times over, which dominates long-context decode (docs/PERFORMANCE.md, design notes)."""
    b, h, _, d = q.shape
    hk, t = k.shape[1], k.shape[2]
    scores = (q.reshape(b, hk, h // hk, d) @ k.transpose(-1, -2)).float() * scale     # (b, Hk, H/Hk, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    p = scores.softmax(-1).to(v.dtype)
    return (p.reshape(b, v.shape[1], -1, t) @ v).reshape(b, h, -1)


def stages(proj):
    """(the nn.Linear a projection applies to its input, the rest or None)."""
    if isinstance(proj, nn.Linear):
        return proj, None
    if hasattr(proj, "stages"):
        return proj.stages()
    raise UsageError(f"--layout fused: a {type(proj).__name__} projection has no stages() to stack; "
                     "allowed: --layout hf, or a projection that is an nn.Linear or defines stages()")


class Fused(nn.Module):
    """Several projections of one input as one GEMM over their first stages' stacked weights, each
    output then through its projection's own rest (PaLU's per-group up-projections, ASVD's B)."""

    def __init__(self, projs):
        super().__init__()
        firsts, rests = zip(*(stages(p) for p in projs))
        w = firsts[0].weight
        self.linear = nn.Linear(w.shape[1], sum(f.out_features for f in firsts),
                                bias=any(f.bias is not None for f in firsts), dtype=w.dtype, device=w.device)
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat([f.weight for f in firsts]))
            if self.linear.bias is not None:
                self.linear.bias.copy_(torch.cat([f.bias if f.bias is not None else f.weight.new_zeros(f.out_features)
                                                  for f in firsts]))
        self.splits = [f.out_features for f in firsts]
        self.rests = list(rests)
        for i, (first, r) in enumerate(zip(firsts, rests)):
            # the rest's weights stay registered (parameter counts, .to()); the first stage lives on only here
            owner = r if isinstance(r, nn.Module) or r is None else r.__self__
            if owner is not None:
                for name, child in list(owner.named_children()):
                    if child is first:
                        setattr(owner, name, None)
                self.add_module(f"rest{i}", owner)

    def forward(self, x):
        return [y if r is None else r(y) for r, y in zip(self.rests, self.linear(x).split(self.splits, dim=-1))]


class FusedAttention(nn.Module):
    """A full-cache Llama attention with one Q/K/V GEMM; decode attends per KV head without repeating K/V."""

    def __init__(self, attn, config):
        super().__init__()
        self.layer_idx, self.head_dim, self.scaling = attn.layer_idx, attn.head_dim, attn.scaling
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.is_causal = True
        self.qkv = Fused([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o_proj = attn.o_proj

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        b, t, _ = hidden_states.shape
        q, k, v = (x.view(b, t, -1, self.head_dim).transpose(1, 2) for x in self.qkv(hidden_states))
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if t == 1:
            mask = attention_mask[:, :, :, :k.shape[2]] if attention_mask is not None else None
            out = grouped_decode_attention(q, k, v, mask, self.scaling)
        else:
            out = sdpa_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling)[0]
        return self.o_proj(out.reshape(b, t, -1)), None


class FusedMLP(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.gate_up = Fused([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn

    def forward(self, x):
        gate, up = self.gate_up(x)
        return self.down_proj(self.act_fn(gate) * up)


@torch.no_grad()
def apply(model, layout):
    """Rebuild every decoder layer in `layout`; returns what was done, for the run's facts."""
    if layout == "hf":
        return {"layout": "hf", "decode_attention": "HF's own (SDPA; K/V repeated per query head under a static "
                                                    "cache)"}
    for layer in model.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "fuse"):   # a method's own attention (PaLU's latent path) stacks its own inputs
            attn.fuse(Fused)
        else:
            layer.self_attn = FusedAttention(attn, model.config)
        layer.mlp = FusedMLP(layer.mlp)
    return {"layout": "fused", "layers": len(model.model.layers),
            "decode_attention": "grouped: each cached K/V (or latent) position read once per KV head"}
