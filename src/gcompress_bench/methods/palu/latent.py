"""PaLU's latent KV cache: the cache holds each layer's K and V latents (Σ physical ranks wide)
instead of K and V.

At attention, K is rebuilt from its latent for every cached position and gets RoPE with the
model's own rotary embedding (Llama-3: theta 500000 and its scaling). V is never rebuilt: the
attention weights multiply the V latent, and V's up-projection is folded into o_proj per head.
The latents ride in the model's ordinary transformers cache (a DynamicCache, or the compiled
mode's StaticCache) as one "head" of width Σr, so generate(), masks, get_seq_length and the suite's own loop work unchanged.
Positions of cached tokens are 0..T-1: unpadded prompts, as the suite feeds them.

Decode attention has two implementations: "unfused" (torch; rebuilds K for the whole cache in
memory, then attends) and "fused" (latent_kernel's Triton kernel; rebuilds K block by block in
registers). enable() picks one per model and says which, so a run can record it.
"""
import torch
from torch import nn
from torch.nn import functional as F

from gcompress_bench import UsageError
from gcompress_bench.measure.layout import grouped_decode_attention
from gcompress_bench.methods.palu import KERNELS, latent_kernel

# Rows of the fused kernel's RoPE table: Llama-3.1's context, since the suite runs models past their
# max_position_embeddings (Llama-3-8B's 8192 at 32k). 32 MiB in bf16 at head_dim 128, once per model.
FUSED_POSITIONS = 131072


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LatentAttention(nn.Module):
    """Replaces a LlamaAttention whose k_proj and v_proj are PaluLinear. With `shared` (a
    latent_kernel.Shared) decode runs the fused kernel, without it the torch path; `kernel` says
    which."""

    def __init__(self, attn, rotary, config, shared=None):
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.n_rep = self.heads // self.kv_heads
        self.scaling = attn.scaling
        self.q_proj, self.k_proj = attn.q_proj, attn.k_proj
        self.v_down = attn.v_proj.VT
        self.qkv = None   # layout.Fused of q_proj, k_proj.VT and v_down under --layout fused
        self.k_ranks, self.v_ranks = attn.k_proj.ranks, attn.v_proj.ranks
        self.gs = self.kv_heads // len(self.v_ranks)
        object.__setattr__(self, "rotary", rotary)   # shared with the model, not a submodule of ours
        self.o_proj = nn.Linear(sum(self._v_rank_of_head(h) for h in range(self.heads)), config.hidden_size,
                                bias=attn.o_proj.bias is not None, dtype=attn.o_proj.weight.dtype,
                                device=attn.o_proj.weight.device)
        with torch.no_grad():
            self.o_proj.weight.copy_(self._folded_o_proj(attn.o_proj.weight, attn.v_proj))
            if attn.o_proj.bias is not None:
                self.o_proj.bias.copy_(attn.o_proj.bias)
        self.kernel = "unfused" if shared is None else "fused"
        if shared is not None:
            object.__setattr__(self, "shared", shared)   # one RoPE table for every layer
            up, meta = latent_kernel.pack(self.k_proj.U, self.v_ranks, self.head_dim, self.n_rep)
            self.register_buffer("k_up", up, persistent=False)
            self.register_buffer("k_meta", meta, persistent=False)

    def fuse(self, fused):
        """--layout fused: one GEMM for the query and both latents (`fused` is layout.Fused)."""
        self.qkv = fused([self.q_proj, self.k_proj.VT, self.v_down])
        self.q_proj = self.v_down = self.k_proj.VT = None   # their weights live on only in the fused GEMM

    def _v_rank_of_head(self, h):
        return self.v_ranks[(h // self.n_rep) // self.gs]

    def _folded_o_proj(self, w_o, v_proj):
        """W_o[:, head h] @ U_v[g][rows of h's KV head], side by side: (hidden, Σ_h r_g(h))."""
        blocks = []
        for h in range(self.heads):
            kv = h // self.n_rep
            g, j = kv // self.gs, kv % self.gs
            up = v_proj.U[g].weight[j * self.head_dim:(j + 1) * self.head_dim]          # (d, r_g)
            blocks.append(w_o[:, h * self.head_dim:(h + 1) * self.head_dim].double() @ up.double())
        return torch.cat(blocks, dim=1)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, position_ids=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        b, t, _ = hidden_states.shape
        if self.qkv is not None:
            q, zk, zv = self.qkv(hidden_states)
        else:
            q, zk, zv = self.q_proj(hidden_states), self.k_proj.VT(hidden_states), self.v_down(hidden_states)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)
        zk, zv = zk[:, None], zv[:, None]   # (b, 1, t, Σr_k), (b, 1, t, Σr_v)
        if cache is not None:
            zk, zv = cache.update(zk, zv, self.layer_idx)
        if t == 1 and self.kernel == "fused":
            # the live length as a device tensor: no host sync, one graph for every length
            out = latent_kernel.decode_attention(q, zk, zv, self.k_up, self.k_meta, self.shared.cos, self.shared.sin,
                                                 position_ids[:, -1] + 1, self.scaling, self.v_ranks,
                                                 self.shared.sm_count).view(b, 1, -1)
        else:
            out = self._attend(q, zk, zv, attention_mask)
        return self.o_proj(out), None

    def _attend(self, q, zk, zv, attention_mask):
        """The torch path; per query head h, P_h @ zv of h's group, side by side in head order."""
        b, _, t, _ = q.shape
        total = zk.shape[2]
        # rebuild K for all cached positions, then RoPE at positions 0..total-1
        k = torch.cat([up(z) for up, z in zip(self.k_proj.U, zk[:, 0].split(self.k_ranks, dim=-1))], dim=-1)
        k = k.view(b, total, self.kv_heads, self.head_dim).transpose(1, 2)
        pos = torch.arange(total, device=k.device)[None]
        kcos, ksin = self.rotary(k, pos)
        k = k * kcos.unsqueeze(1) + _rotate_half(k) * ksin.unsqueeze(1)
        is_causal = t > 1 and attention_mask is None
        mask = attention_mask[:, :, :, :total] if attention_mask is not None else None
        outs = []
        zv_groups = zv.split(self.v_ranks, dim=-1)
        for g, zvg in enumerate(zv_groups):
            heads = slice(g * self.gs * self.n_rep, (g + 1) * self.gs * self.n_rep)
            kg = k[:, g * self.gs:(g + 1) * self.gs]
            if t == 1:   # each rebuilt K position and each latent read once, not once per query head
                o = grouped_decode_attention(q[:, heads], kg, zvg, mask, self.scaling).unsqueeze(2)
            else:
                kg = kg.repeat_interleave(self.n_rep, dim=1)
                o = F.scaled_dot_product_attention(q[:, heads], kg, zvg.expand(-1, kg.shape[1], -1, -1),
                                                   attn_mask=mask, is_causal=is_causal, scale=self.scaling)
            outs.append(o.transpose(1, 2).reshape(b, t, -1))   # groups may differ in V rank
        return torch.cat(outs, dim=-1)


def check_supported(config, name):
    """Checked at session start, from the config alone: one line naming everything missing."""
    missing = []
    if config.model_type != "llama":
        missing.append(f"a Llama-architecture model (model_type is {config.model_type!r})")
    if getattr(config, "attention_bias", False):
        missing.append("attention projections without bias")
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in ("default", "llama3"):
        missing.append(f"default or llama3 RoPE (rope_type is {rope!r})")
    if missing:
        raise UsageError(f"--palu-cache latent: {name} lacks " + "; ".join(missing))


def choose_kernel(kernel, device):
    """"auto": fused where latent_kernel can run, else unfused; "fused" where it cannot is an error."""
    if kernel not in KERNELS:
        raise UsageError(f"--palu-latent-kernel: unknown value {kernel!r}; allowed: {', '.join(KERNELS)}")
    why = latent_kernel.unavailable_reason(device)
    if kernel == "fused" and why:
        raise UsageError(f"--palu-latent-kernel: 'fused' cannot run here: {why}; allowed: auto, unfused")
    return kernel if kernel != "auto" else "unfused" if why else "fused"


def enable(lm, kernel="unfused"):
    """Swap every attention layer of a PaLU-compressed model to the latent path; returns the decode
    attention in use, "fused" or "unfused". The fused kernel's tables are built here for the
    model's device and dtype: enable after moving the model."""
    chosen = choose_kernel(kernel, lm.device)
    config, rotary = lm.model.config, lm.model.model.rotary_emb
    shared = None
    if chosen == "fused":
        positions = max(config.max_position_embeddings, FUSED_POSITIONS)
        shared = latent_kernel.shared(rotary, positions, lm.model.dtype, lm.device)
    for layer in lm.model.model.layers:
        layer.self_attn = LatentAttention(layer.self_attn, rotary, config, shared)
    return chosen
