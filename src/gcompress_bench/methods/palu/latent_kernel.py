"""Fused decode attention over PaLU's latent KV cache, in Triton (flash-decoding).

The torch path writes K rebuilt for every cached position to memory, applies RoPE in more passes,
and only then attends; this is the design PaLU's own kernel follows to avoid that traffic, kept as
an option because on the GPU measured it is slower than the torch path (docs/PERFORMANCE.md,
"The fused latent kernel"). Here one pass over each
block of positions reads the K latent, rebuilds the block's K in registers (the KV head's rows of
U_g, as two halves so RoPE pairs dim i with i + head_dim/2 without a shuffle), scores it against
the query heads sharing that KV head, and accumulates softmax(scores) @ V latent with an online
softmax in fp32. The positions are split into chunks across programs (split-K), so one sequence
at 16k-32k positions still fills the GPU; a second small kernel combines the chunks.

Assumptions, shared with latent.py: cached position p sits in slot p, and every slot below the
live length is attended (unpadded prompts: the attention mask says nothing more). The live length
comes in as a device tensor, so a StaticCache larger than it needs no host sync and no
recompilation per length, and the step can be captured in a CUDA graph.
"""
import math
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:   # CPU-only installs: unavailable_reason() says so and no kernel is defined
    triton = None


def unavailable_reason(device):
    """Why the fused kernel cannot run on `device`, or None when it can."""
    kind = torch.device(device).type
    if kind != "cuda":
        return f"no CUDA device (the device is {kind})"
    if triton is None:
        return "triton is not installed"
    return None


@dataclass(frozen=True)
class Shared:
    """What every layer's kernel shares: RoPE's cos and sin for positions 0..N-1, first half of
    head_dim only (the second half repeats it), and the GPU's SM count, which sizes the split.
    One table per model, not per layer."""
    cos: torch.Tensor
    sin: torch.Tensor
    sm_count: int


def shared(rotary, positions, dtype, device, sm_count=None):
    """The table comes from the model's own rotary embedding (its scaling and its rounding to the
    model's dtype included), so K gets exactly the cos/sin the torch path multiplies it by."""
    cos, sin = rotary(torch.empty(0, dtype=dtype, device=device), torch.arange(positions, device=device)[None])
    half = cos.shape[-1] // 2
    cos, sin = cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous()
    for table in (cos, sin):   # CUDA graphs read it in place instead of copying it in at every replay
        torch._dynamo.mark_static_address(table)
    if sm_count is None:
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    return Shared(cos, sin, sm_count)


def pack(k_up, v_ranks, head_dim, n_rep):
    """Static inputs, built once per layer. `up`: each KV head's rows of its group's U_g, transposed
    to (rank, head_dim) and zero-padded to the largest K rank, so one pointer and one stride serve
    irregular ranks; it duplicates the K up-projections (0.7 MiB a layer for Llama-3-8B at rank
    352). `meta`, int32 per group: K rank, first zk column, V rank, first zv column, first output
    column. k_up: the K PaluLinear's U (one Linear per group)."""
    w = k_up[0].weight
    ranks = [u.weight.shape[1] for u in k_up]
    gs = w.shape[0] // head_dim
    up = torch.zeros(len(k_up) * gs, max(ranks), head_dim, dtype=w.dtype, device=w.device)
    for g, u in enumerate(k_up):
        up[g * gs:(g + 1) * gs, :ranks[g]] = u.weight.detach().view(gs, head_dim, ranks[g]).transpose(1, 2)
    meta, zk_col, zv_col, out_col = [], 0, 0, 0
    for rk, rv in zip(ranks, v_ranks):
        meta.append([rk, zk_col, rv, zv_col, out_col])
        zk_col, zv_col, out_col = zk_col + rk, zv_col + rv, out_col + gs * n_rep * rv
    return up, torch.tensor(meta, dtype=torch.int32, device=w.device)


def _pow2(n, least=16):
    """tl.arange needs powers of two and tl.dot at least 16 along every side."""
    return max(least, 1 << (n - 1).bit_length())


def decode_attention(q, zk, zv, up, meta, cos, sin, length, scale, v_ranks, sm_count, *,
                     block_n=64, block_r=64, waves=4, num_warps=4, num_stages=2):
    """One new token's attention over the latent cache. q (b, H, 1, head_dim), after RoPE; zk
    (b, 1, T, Σ K ranks) and zv (b, 1, T, Σ V ranks), the cache (T may exceed the live length);
    up, meta from pack(); cos, sin from shared(); length: live positions, int tensor (b,) or (1,).
    Returns (b, Σ_h r_v(h)) in latent.py's layout: per query head, in head order, P_h @ zv of its
    group. `waves`: programs per SM the split aims for (split-K fills the GPU when b * KV heads
    cannot); the block sizes and warps are the tuning knobs tools/latent_kernel_bench.py sweeps.
    The defaults are the sweep's fastest on an H200 at B8 and within 8% of it at B1
    (docs/PERFORMANCE.md, "The fused latent kernel")."""
    b, heads, _, hd = q.shape
    kv_heads, t = up.shape[0], zk.shape[2]
    gs, n_rep, half = kv_heads // len(v_ranks), heads // kv_heads, hd // 2
    if t > cos.shape[0]:
        raise ValueError(f"the latent cache holds {t} positions, the fused kernel's RoPE table only "
                         f"{cos.shape[0]}; use the unfused kernel")
    n_blocks = -(-t // block_n)
    splits = max(1, min(n_blocks, -(-waves * sm_count // (b * kv_heads))))
    chunk = -(-n_blocks // splits) * block_n
    splits = -(-t // chunk)
    rv_max = max(v_ranks)
    part_acc = q.new_empty((b, heads, splits, rv_max), dtype=torch.float32)
    part_m = q.new_empty((b, heads, splits), dtype=torch.float32)
    part_l = q.new_empty((b, heads, splits), dtype=torch.float32)
    out = q.new_empty((b, gs * n_rep * sum(v_ranks)))
    block_v = _pow2(rv_max)
    _split_kernel[(splits, kv_heads, b)](
        q, zk, zv, up, cos, sin, meta, length, part_acc, part_m, part_l,
        t, chunk, scale * math.log2(math.e),
        q.stride(0), q.stride(1), q.stride(3), zk.stride(0), zk.stride(2), zk.stride(3),
        zv.stride(0), zv.stride(2), zv.stride(3), up.stride(0), up.stride(1), up.stride(2),
        cos.stride(0), cos.stride(1), meta.stride(0), 0 if length.shape[0] == 1 else length.stride(0),
        part_acc.stride(0), part_acc.stride(1), part_acc.stride(2), part_acc.stride(3),
        part_m.stride(0), part_m.stride(1), part_m.stride(2),
        N_REP=n_rep, GS=gs, HALF=half, BLOCK_H=_pow2(n_rep), BLOCK_D=_pow2(half), BLOCK_N=block_n,
        BLOCK_R=block_r, BLOCK_V=block_v, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages)
    _combine_kernel[(heads, b)](
        part_acc, part_m, part_l, out, meta, splits,
        part_acc.stride(0), part_acc.stride(1), part_acc.stride(2), part_acc.stride(3),
        part_m.stride(0), part_m.stride(1), part_m.stride(2), out.stride(0), meta.stride(0),
        HEADS_PER_GROUP=gs * n_rep, BLOCK_S=_pow2(splits, 1), SUB_S=8, BLOCK_V=block_v, num_warps=4)
    return out


if triton is not None:
    @triton.jit
    def _split_kernel(q, zk, zv, up, cos, sin, meta, length, part_acc, part_m, part_l,
                      n_slots, chunk, qk_scale,
                      q_sb, q_sh, q_sd, zk_sb, zk_st, zk_sd, zv_sb, zv_st, zv_sd, up_sh, up_sr, up_sd,
                      rope_st, rope_sd, meta_sg, len_sb,
                      pa_sb, pa_sh, pa_ss, pa_sv, pm_sb, pm_sh, pm_ss,
                      N_REP: tl.constexpr, GS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_V: tl.constexpr, PRECISION: tl.constexpr):
        """One (chunk of positions, KV head, batch row): unnormalized P @ zv with its running max
        (log2 domain) and sum, for the N_REP query heads of the KV head."""
        split, kv, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        g_meta = meta + (kv // GS) * meta_sg
        rk, zk_col = tl.load(g_meta), tl.load(g_meta + 1)
        rv, zv_col = tl.load(g_meta + 2), tl.load(g_meta + 3)
        start = split * chunk
        end = tl.minimum(tl.minimum(start + chunk, n_slots), tl.load(length + b * len_sb).to(tl.int32))

        rows = tl.arange(0, BLOCK_H)
        heads = kv * N_REP + rows
        row_ok = rows < N_REP
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HALF
        q_at = q + b * q_sb + heads[:, None] * q_sh + d[None, :] * q_sd
        q_lo = tl.load(q_at, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        q_hi = tl.load(q_at + HALF * q_sd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        r = tl.arange(0, BLOCK_R)
        v = tl.arange(0, BLOCK_V)
        v_ok = v < rv
        n = tl.arange(0, BLOCK_N)

        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_V], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            pos = n0 + n
            pos_ok = pos < end
            k_lo = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            k_hi = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            for r0 in range(0, rk, BLOCK_R):
                rr = r0 + r
                r_ok = rr < rk
                z = tl.load(zk + b * zk_sb + pos[:, None] * zk_st + (zk_col + rr)[None, :] * zk_sd,
                            mask=pos_ok[:, None] & r_ok[None, :], other=0.0)
                u_at = up + kv * up_sh + rr[:, None] * up_sr + d[None, :] * up_sd
                u_lo = tl.load(u_at, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
                u_hi = tl.load(u_at + HALF * up_sd, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
                k_lo = tl.dot(z, u_lo, k_lo, input_precision=PRECISION)
                k_hi = tl.dot(z, u_hi, k_hi, input_precision=PRECISION)
            rope_at = pos[:, None] * rope_st + d[None, :] * rope_sd
            c = tl.load(cos + rope_at, mask=pos_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            s = tl.load(sin + rope_at, mask=pos_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            rot_lo = (k_lo * c - k_hi * s).to(q_lo.dtype)
            rot_hi = (k_hi * c + k_lo * s).to(q_lo.dtype)
            scores = tl.dot(q_lo, tl.trans(rot_lo), input_precision=PRECISION)
            scores = tl.dot(q_hi, tl.trans(rot_hi), scores, input_precision=PRECISION)
            # fp32 whatever type a caller gives the scale (inductor may pass a Python float as fp64)
            scores = tl.where(pos_ok[None, :], (scores * qk_scale).to(tl.float32), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            zv_blk = tl.load(zv + b * zv_sb + pos[:, None] * zv_st + (zv_col + v)[None, :] * zv_sd,
                             mask=pos_ok[:, None] & v_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(zv_blk.dtype), zv_blk, input_precision=PRECISION)
            m_i = m_new

        tl.store(part_acc + b * pa_sb + heads[:, None] * pa_sh + split * pa_ss + v[None, :] * pa_sv, acc,
                 mask=row_ok[:, None] & v_ok[None, :])
        ml_at = b * pm_sb + heads * pm_sh + split * pm_ss
        tl.store(part_m + ml_at, m_i, mask=row_ok)
        tl.store(part_l + ml_at, l_i, mask=row_ok)

    @triton.jit
    def _combine_kernel(part_acc, part_m, part_l, out, meta, n_splits,
                        pa_sb, pa_sh, pa_ss, pa_sv, pm_sb, pm_sh, pm_ss, out_sb, meta_sg,
                        HEADS_PER_GROUP: tl.constexpr, BLOCK_S: tl.constexpr, SUB_S: tl.constexpr,
                        BLOCK_V: tl.constexpr):
        """One (query head, batch row): the chunks rescaled to their common max and normalized,
        written at the head's columns. A chunk past the live length has max -inf: weight 0."""
        h, b = tl.program_id(0), tl.program_id(1)
        g = h // HEADS_PER_GROUP
        rv = tl.load(meta + g * meta_sg + 2)
        col = tl.load(meta + g * meta_sg + 4) + (h - g * HEADS_PER_GROUP) * rv
        m_at = part_m + b * pm_sb + h * pm_sh
        s = tl.arange(0, BLOCK_S)
        m = tl.load(m_at + s * pm_ss, mask=s < n_splits, other=float("-inf"))
        m_max = tl.max(m, 0)
        l_sum = tl.load(part_l + b * pm_sb + h * pm_sh + s * pm_ss, mask=s < n_splits, other=0.0)
        denom = tl.sum(tl.exp2(m - m_max) * l_sum, 0)
        v = tl.arange(0, BLOCK_V)
        v_ok = v < rv
        total = tl.zeros([BLOCK_V], tl.float32)
        for s0 in range(0, n_splits, SUB_S):
            idx = s0 + tl.arange(0, SUB_S)
            ok = idx < n_splits
            w = tl.exp2(tl.load(m_at + idx * pm_ss, mask=ok, other=float("-inf")) - m_max)
            part = tl.load(part_acc + b * pa_sb + h * pa_sh + idx[:, None] * pa_ss + v[None, :] * pa_sv,
                           mask=ok[:, None] & v_ok[None, :], other=0.0)
            total += tl.sum(part * w[:, None], 0)
        tl.store(out + b * out_sb + col + v, (total / denom).to(out.dtype.element_ty), mask=v_ok)
