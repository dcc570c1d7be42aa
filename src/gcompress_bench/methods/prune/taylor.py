"""Structured pruning's work: Taylor importance, the head groups and channels kept, and the narrowed linears."""
import time

import torch

from gcompress_bench.methods import CompressionFailed, align
from gcompress_bench.models import head_dim


@torch.enable_grad()
def taylor_scores(model, ids):
    """(channels (layers, intermediate), groups (layers, kv heads)): |Σ h · ∂L/∂h| over every calibration
    token, accumulated in fp32; L is each window's mean causal LM loss."""
    layers, cfg = model.model.layers, model.config
    kv = cfg.num_key_value_heads
    sums, acts = {}, {}   # acts: this window's inputs, until their gradient arrives

    def capture(key):
        def pre(_mod, args):
            acts[key] = args[0].detach()
            args[0].register_hook(lambda g: add(key, g))
        return pre

    def add(key, g):
        x = acts.pop(key)
        s = (x.float() * g.float()).reshape(-1, x.shape[-1]).sum(0)
        sums[key] = sums.get(key, 0) + s

    frozen = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for i, layer in enumerate(layers):
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(capture(("mlp", i))))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(capture(("attn", i))))
        embed = model.get_input_embeddings()
        device = embed.weight.device
        for row in ids:
            row = row[None].to(device)
            x = embed(row).detach().requires_grad_(True)
            model(inputs_embeds=x, labels=row, use_cache=False).loss.backward()
            acts.clear()
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    channels = torch.stack([sums["mlp", i] for i in range(len(layers))]).abs()
    groups = torch.stack([sums["attn", i].view(kv, -1).sum(1) for i in range(len(layers))]).abs()
    return channels.cpu(), groups.cpu()


def select_groups(scores, fraction):
    """(layers, kv) bool of the KV head groups kept: the `fraction` of all groups with the lowest score
    removed, at most all but one per layer."""
    n_layers, kv = scores.shape
    keep = torch.ones(n_layers, kv, dtype=torch.bool)
    want = min(round(fraction * n_layers * kv), n_layers * (kv - 1))
    removed = 0
    for flat in scores.flatten().argsort(stable=True).tolist():
        if removed == want:
            break
        layer, g = divmod(flat, kv)
        if keep[layer].sum() > 1:
            keep[layer, g] = False
            removed += 1
    return keep


def allocate_channels(scores, total):
    """Channels kept per layer: the `total` with the highest score across layers, each layer's best one
    always among them."""
    n_layers, width = scores.shape
    total = max(n_layers, min(total, n_layers * width))
    ranked = scores.double()
    ranked[torch.arange(n_layers), ranked.argmax(1)] = float("inf")
    kept = ranked.flatten().topk(total).indices // width
    return torch.bincount(kept, minlength=n_layers).tolist()


@torch.no_grad()
def _narrow(linear, index, dim, width):
    """`linear` keeping `index` along `dim` (0: output rows, 1: input columns), then zeros up to `width`."""
    w = linear.weight.index_select(dim, index)
    pads = [0, 0, 0, 0]
    pads[3 - 2 * dim] = width - len(index)    # F.pad lists the last dim first
    linear.weight = torch.nn.Parameter(torch.nn.functional.pad(w, pads), requires_grad=linear.weight.requires_grad)
    if dim == 0 and linear.bias is not None:
        linear.bias = torch.nn.Parameter(torch.nn.functional.pad(linear.bias[index], (0, width - len(index))),
                                         requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


def _group_index(groups, span, device):
    return torch.cat([torch.arange(g * span, (g + 1) * span) for g in groups]).to(device)


def compress(lm, plan, opts, progress):
    t0 = time.perf_counter()
    model, cfg = lm.model, lm.model.config
    layers = model.model.layers
    hidden, inter, kv, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads, head_dim(cfg)
    rep = cfg.num_attention_heads // kv
    ids, calib = plan.calibration
    progress(f"prune: Taylor importance on {calib['windows']} x {calib['seq_len']} tokens of {calib['source']}")
    channels, groups = taylor_scores(model, ids)
    if not (torch.isfinite(channels).all() and torch.isfinite(groups).all()):
        raise CompressionFailed("the Taylor importance scores are not finite: the model's own forward or backward "
                                "gives NaN or inf")
    progress(f"prune: importance scored ({time.perf_counter() - t0:.1f} s)")

    channel_params, group_params = 3 * hidden, 2 * (rep + 1) * hd * hidden
    keep_groups = select_groups(groups, opts["heads"])
    mlp_original = len(layers) * inter * channel_params
    attn_original = len(layers) * kv * group_params if opts["heads"] > 0 else 0
    attn_kept = int(keep_groups.sum()) * group_params if opts["heads"] > 0 else 0
    budget = opts["ratio"] * (mlp_original + attn_original) - attn_kept
    logical = allocate_channels(channels, int(budget // channel_params))

    ranked = channels.double().sort(1, descending=True).values
    gains = torch.cat([torch.zeros(len(layers), 1, dtype=ranked.dtype), ranked.cumsum(1)], 1)
    modules = [align.Module(f"model.layers.{i}.mlp", logical[i], inter, channel_params, gains[i],
                            {"op": "gemm", "sweep": "n", "k": hidden}) for i in range(len(layers))]
    dims = align.apply(plan.policy, modules)

    with torch.no_grad():
        for i, layer in enumerate(layers):
            d = dims[f"model.layers.{i}.mlp"]
            if d["kept"] < inter or d["physical"] != inter:
                mlp, index = layer.mlp, channels[i].topk(d["kept"]).indices.sort().values.to(lm.device)
                _narrow(mlp.gate_proj, index, 0, d["physical"])
                _narrow(mlp.up_proj, index, 0, d["physical"])
                _narrow(mlp.down_proj, index, 1, d["physical"])
            kept = keep_groups[i].nonzero().flatten().tolist()
            if len(kept) < kv:
                attn = layer.self_attn
                q_index = _group_index(kept, rep * hd, lm.device)
                kv_index = _group_index(kept, hd, lm.device)
                _narrow(attn.q_proj, q_index, 0, len(q_index))
                _narrow(attn.k_proj, kv_index, 0, len(kv_index))
                _narrow(attn.v_proj, kv_index, 0, len(kv_index))
                _narrow(attn.o_proj, q_index, 1, len(q_index))
    progress(f"prune: pruned ({time.perf_counter() - t0:.1f} s)")

    alignment = align.facts(plan.policy, modules, dims)
    facts = _summary(opts, dims, keep_groups, inter, kv, channel_params, group_params, mlp_original, attn_original)
    facts.update(alignment=alignment, aligned_share=alignment["aligned_share"], calibration=calib)
    return facts


def _summary(opts, dims, keep_groups, inter, kv, channel_params, group_params, mlp_original, attn_original):
    groups_kept = [row.nonzero().flatten().tolist() for row in keep_groups]
    n_groups = int(keep_groups.sum())
    heads = opts["heads"] > 0
    kept = sum(d["kept"] for d in dims.values()) * channel_params + (n_groups * group_params if heads else 0)
    physical = [d["physical"] for d in dims.values()]
    orig = mlp_original + attn_original
    return {"ratio": opts["ratio"], "heads": opts["heads"], "intermediate_size": inter, "kv_heads": kv,
            "modules": {name: {**d, "kv_heads_kept": g} for (name, d), g in zip(dims.items(), groups_kept)},
            "kv_heads_removed": int((~keep_groups).sum()),
            "params_original": orig, "params_kept": kept, "params_kept_ratio": kept / orig,
            "params_physical": sum(physical) * channel_params + (n_groups * group_params if heads else 0),
            "width_min": min(physical), "width_max": max(physical)}
