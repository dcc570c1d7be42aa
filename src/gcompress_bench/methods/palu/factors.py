"""PaLU's factors: ranks and where they come from, whitening, the factorization, and the factored modules."""
import json
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

from gcompress_bench import UsageError, dimtable, models
from gcompress_bench.methods import CompressionFailed, align
from gcompress_bench.methods.calibration import cached

PROJS = ("k_proj", "v_proj")
RATIO_DIR_NAME = re.compile(r"^(?P<model>.+?)_ratio-(?P<ratio>[0-9.]+)_gs-(?P<gs>\d+)(?:-(?P<method>.+))?$")


class PaluLinear(nn.Module):
    """Drop-in for k_proj/v_proj. Parameter names follow PaLU's dumps: VT (stacked A_g), U.<i> (B_g)."""

    def __init__(self, in_features, ranks, group_out, bias, dtype, device):
        super().__init__()
        self.ranks = list(ranks)
        self.VT = nn.Linear(in_features, sum(ranks), bias=False, dtype=dtype, device=device)
        self.U = nn.ModuleList(nn.Linear(r, group_out, bias=False, dtype=dtype, device=device) for r in ranks)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def up(self, latent):
        out = torch.cat([up(z) for up, z in zip(self.U, latent.split(self.ranks, dim=-1))], dim=-1)
        return out + self.bias if self.bias is not None else out

    def forward(self, x):
        return self.up(self.VT(x))

    def stages(self):
        """(the Linear applied to the input, the rest): what a fused layout stacks with its neighbours.
        Groups of one rank rebuild their rows in one batched product instead of a GEMM each."""
        if len(self.ranks) > 1 and len(set(self.ranks)) == 1:
            return self.VT, GroupUp(self.U, self.bias)
        return self.VT, self.up


class GroupUp(nn.Module):
    """Every group's B_g @ z_g as one batched product: (..., G·r) -> (..., G·out)."""

    def __init__(self, ups, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([u.weight.detach() for u in ups]))   # (G, out, r)
        self.bias = bias

    def forward(self, z):
        g, _, r = self.weight.shape
        out = torch.einsum("...gr,gor->...go", z.unflatten(-1, (g, r)), self.weight).flatten(-2)
        return out + self.bias if self.bias is not None else out


def geometry(config):
    return config.num_attention_heads, config.num_key_value_heads, models.head_dim(config)


def check_group_size(config, gs, model_name):
    heads, kv, _ = geometry(config)
    if gs < 1 or kv % gs or heads % gs:
        valid = [g for g in range(1, kv + 1) if kv % g == 0 and heads % g == 0]
        raise UsageError(f"--palu-group-size: {gs} does not divide {model_name}'s {kv} KV heads and {heads} "
                         f"attention heads; allowed: {', '.join(map(str, valid))}")


def module_paths(config):
    return [f"model.layers.{i}.self_attn.{p}" for i in range(config.num_hidden_layers) for p in PROJS]


def uniform_ranks(config, ratio, gs):
    """round(ratio * gs*head_dim) for every group (at least 1); PaLU's rounding to 32 is the alignment
    policy that follows (round:32, the method's default)."""
    _, kv, hd = geometry(config)
    r = min(gs * hd, max(1, round(ratio * gs * hd)))
    return {path: [r] * (kv // gs) for path in module_paths(config)}


def read_rank_file(path, config, gs):
    """PaLU's dumped config.json ("head_wise_ranks") or a plain JSON of the same mapping, validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--palu-ranks: rank file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"--palu-ranks: {path} can't be read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--palu-ranks: {path} is not valid JSON ({e})") from None
    ranks = data.get("head_wise_ranks", data) if isinstance(data, dict) else None
    _, kv, hd = geometry(config)
    groups, full = kv // gs, gs * hd
    want = module_paths(config)
    if not isinstance(ranks, dict) or set(ranks) != set(want):
        missing = sorted(set(want) - set(ranks or {}), key=want.index)[:2]
        extra = sorted(set(ranks or {}) - set(want))[:2]
        raise UsageError(f"--palu-ranks: {path} must map each of the {len(want)} k_proj/v_proj modules to a list "
                         f"of ranks (e.g. {want[0]!r}); missing {missing}, unexpected {extra}")
    for mod in want:
        rs = ranks[mod]
        if not isinstance(rs, list) or len(rs) != groups:
            raise UsageError(f"--palu-ranks: {path}: {mod} has {rs!r}; allowed: a list of {groups} ranks "
                             f"(one per group of {gs} KV heads)")
        for r in rs:
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= full:
                raise UsageError(f"--palu-ranks: {path}: {mod} rank {r!r} is not allowed; "
                                 f"allowed: integers 1..{full} (group size {gs} x head_dim {hd})")
    return {mod: list(ranks[mod]) for mod in want}


def resolve_ratio_dir(root, model_name, ratio, gs, svd):
    """Pick the PaLU output dir matching model, ratio and group size; record every candidate seen."""
    root = Path(root)
    found = []
    for cfg in sorted(root.rglob("config.json")):
        m = RATIO_DIR_NAME.match(cfg.parent.name)
        if m:
            found.append({"path": str(cfg.parent), "model": m["model"], "ratio": float(m["ratio"]),
                          "gs": int(m["gs"]), "method": m["method"] or ""})
    match = [c for c in found if c["model"].lower() == model_name.lower()
             and math.isclose(c["ratio"], ratio) and c["gs"] == gs]
    if not match:
        seen = "; ".join(f"{Path(c['path']).name}" for c in found) or "none"
        raise UsageError(f"--palu-ranks: no PaLU output under {root} matches model {model_name}, ratio {ratio}, "
                         f"gs {gs}; found: {seen}")
    # Prefer the run's SVD mode in the method suffix (e.g. "fisher_uniform-whiten"), then the name.
    match.sort(key=lambda c: (not c["method"].endswith(svd), c["method"]))
    return match[0]["path"], found


def allocate(pcfg, config, model_name, palu_name):
    """Ranks per module and where they came from; every check runs before weights are loaded,
    including those of a PaLU dump whose factors will be loaded."""
    gs = pcfg["group_size"]
    check_group_size(config, gs, model_name)
    src = pcfg.get("ranks")
    if not src:
        return uniform_ranks(config, pcfg["ratio"], gs), {"source": "uniform"}
    info = None
    if Path(src).is_dir() and not (Path(src) / "config.json").exists():
        chosen, candidates = resolve_ratio_dir(src, palu_name, pcfg["ratio"], gs, pcfg["svd"])
        info = {"source": "ratio_dir", "ratio_dir": str(src), "chosen": chosen, "candidates": candidates}
        src = chosen
    path = Path(src) / "config.json" if Path(src).is_dir() else Path(src)
    info = info or {"source": "rank_file", "path": str(path)}
    ranks = read_rank_file(path, config, gs)
    if Path(src).is_dir():
        files = dump_weight_files(src)
        if files and pcfg["factors"] == "load":
            check_dump(src, files, ranks, config, gs, palu_name)
            info["factors_from"] = {"dir": str(Path(src).resolve()), "files": [f.name for f in files]}
    return ranks, info


def dump_weight_files(folder):
    """The weight files of a dir written by PaLU's compress.py (save_pretrained), sharded or not."""
    folder = Path(folder)
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def _dump_tensors(files, names=None, shapes_only=False):
    """{name: tensor (or shape)} of the wanted tensors; safetensors headers are read without the data."""
    from safetensors import safe_open

    out = {}
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    if names is None or k in names:
                        out[k] = tuple(st.get_slice(k).get_shape()) if shapes_only else st.get_tensor(k)
        else:
            sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            out.update({k: tuple(v.shape) if shapes_only else v for k, v in sd.items() if names is None or k in names})
    return out


def _dump_names(module, groups):
    return [f"{module}.VT.weight"] + [f"{module}.U.{g}.weight" for g in range(groups)]


def check_dump(folder, files, ranks, config, gs, palu_name):
    """A dump's factors must be PaLU's layout for these ranks and this base model, made from this model."""
    meta = json.loads((Path(folder) / "config.json").read_text())
    origin = meta.get("original_model_name_or_path")
    if origin and Path(str(origin).rstrip("/")).name.lower() != palu_name.lower():
        raise UsageError(f"--palu-ranks: {folder} was made from {origin!r} (original_model_name_or_path), not "
                         f"from {palu_name}; allowed: a PaLU dump of {palu_name}, or --palu-factors recompute")
    _, kv, hd = geometry(config)
    for f in files:
        why = models.safetensors_problem(f) if f.suffix == ".safetensors" else None
        if why:
            raise UsageError(f"--palu-ranks: {f} {why}; allowed: a PaLU dump as compress.py wrote it, "
                             "or --palu-factors recompute")
    try:
        shapes = _dump_tensors(files, shapes_only=True)
    except Exception as e:  # noqa: BLE001 - whatever a torn or foreign weight file makes its reader raise
        raise UsageError(f"--palu-ranks: {folder}: its weights can't be read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); allowed: a PaLU dump as compress.py wrote "
                         "it, or --palu-factors recompute") from None
    for mod, rs in ranks.items():
        want = dict(zip(_dump_names(mod, len(rs)), [(sum(rs), config.hidden_size)] + [(gs * hd, r) for r in rs]))
        for name, shape in want.items():
            got = shapes.get(name)
            if got != shape:
                raise UsageError(f"--palu-ranks: {folder}: {name} has shape {list(got) if got else 'none (missing)'}; "
                                 f"allowed: {list(shape)} (ranks {rs} of its config, hidden {config.hidden_size}, "
                                 f"group size {gs} x head_dim {hd}) - the dump disagrees with its ranks or the model")


def load_dump_factors(folder, files, ranks):
    """{module: (VT, [U_g])} from a PaLU dump, as stored (the caller casts and pads)."""
    t = _dump_tensors([Path(folder) / f for f in files],
                      {n for mod, rs in ranks.items() for n in _dump_names(mod, len(rs))})
    return {mod: (t[f"{mod}.VT.weight"], [t[f"{mod}.U.{g}.weight"] for g in range(len(rs))])
            for mod, rs in ranks.items()}


@torch.inference_mode()
def gram_matrices(lm, ids):
    """X^T X of every layer's k/v input (k_proj and v_proj read the same normed hidden states), fp64."""
    layers = lm.model.model.layers
    grams = [torch.zeros(lm.spec.config.hidden_size, lm.spec.config.hidden_size, dtype=torch.float64,
                         device=lm.device) for _ in layers]

    def hook(i):
        def add(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[i].addmm_(x.T, x)
        return add
    handles = [layer.self_attn.k_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        for row in ids.to(lm.device):
            lm.model(input_ids=row[None], use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return grams


def cholesky_factor(gram):
    """S with S S^T = G; a non-positive-definite G gets a growing multiple of mean(diag) added."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().mean()
    for eps in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
        S, info = torch.linalg.cholesky_ex(gram + eps * scale * eye)
        if info.item() == 0:
            return S, eps
    raise RuntimeError("Gram matrix is not positive definite even with 1e-2 * mean(diag) added")


def factorize(W, r, S=None):
    """W (out, in) ~= B A with B (out, r), A (r, in); whitened when S is given. fp64 in, fp64 out."""
    if S is None:
        U, sig, Vh = torch.linalg.svd(W, full_matrices=False)
        root = sig[:r].sqrt()
        return U[:, :r] * root, root[:, None] * Vh[:r]
    U, sig, Vh = torch.linalg.svd(W @ S, full_matrices=False)
    root = sig[:r].sqrt()
    M = root[:, None] * Vh[:r]                                   # Σ^½ Vᵀ, (r, in)
    A = torch.linalg.solve_triangular(S.T, M.T, upper=True).T    # Σ^½ Vᵀ S⁻¹
    return U[:, :r] * root, A


def activation_error(W, BA, S):
    """‖(W − BA) Xᵀ‖ / ‖W Xᵀ‖ through S (S Sᵀ = XᵀX), without keeping X."""
    return (torch.linalg.norm((W - BA) @ S) / torch.linalg.norm(W @ S)).item()


def whitening_factors(lm, calibration, progress=lambda line: None):
    """Cholesky factors per layer, cached on disk by the model's weights and the calibration data (a
    second run skips calibration), verified on every use."""
    ids, calib = calibration
    calib = {**calib, "windows": int(ids.shape[0]), "seq_len": int(ids.shape[1])}
    progress(f"palu: calibration on {calib['windows']} x {calib['seq_len']} tokens of {calib['source']}")
    S, info = cached(lm, "whiten", calib, ids, _calibrate, progress)
    return S, {**calib, **info}


def _calibrate(lm, ids):
    t0 = time.perf_counter()
    grams = gram_matrices(lm, ids)
    bad = [i for i, g in enumerate(grams) if not torch.isfinite(g).all()]
    if bad:
        raise CompressionFailed(f"the calibration activations of layer {bad[0]} are not finite: the model's own "
                                "forward gives NaN or inf")
    chol = [cholesky_factor(g) for g in grams]
    return [s for s, _ in chol], {"calibration_s": round(time.perf_counter() - t0, 3), "eps": [e for _, e in chol]}


@torch.inference_mode()
def compress(lm, plan, pcfg, progress=lambda line: None):
    """Replace k_proj/v_proj in place; returns the facts recorded with the run.
    The factors are PaLU's own when the plan names a dump to load them from, else computed here."""
    t0 = time.perf_counter()
    ranks, rank_info = plan.ranks, plan.rank_info
    config = lm.spec.config
    _, kv, hd = geometry(config)
    gs = pcfg["group_size"]
    dump = rank_info.get("factors_from")
    if dump:
        progress(f"palu: loading K/V factors from {dump['dir']}")
        stored, S_all, calib = load_dump_factors(dump["dir"], dump["files"], ranks), None, None
        factors = f"loaded from {dump['dir']}"
    else:
        S_all, calib = whitening_factors(lm, plan.calibration, progress) if plan.calibration else (None, None)
        factors = f"recomputed ({pcfg['svd']})"
    policy = align.parse(pcfg["align_policy"])
    shaped = group_modules(lm, ranks, S_all, policy)
    dims = align.apply(policy, shaped)
    modules = {}
    layers = lm.model.model.layers
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        for proj in PROJS:
            name = f"model.layers.{i}.self_attn.{proj}"
            old = getattr(attn, proj)
            W = old.weight.double()
            S = S_all[i].to(W.device) if S_all is not None else None
            groups = [dims[f"{name}.group{g}"] for g in range(len(ranks[name]))]
            kept, phys = [d["kept"] for d in groups], [d["physical"] for d in groups]
            new = PaluLinear(W.shape[1], phys, gs * hd, old.bias, old.weight.dtype, old.weight.device)
            A_rows, w_err, a_err = [], [], []
            VT, Us = stored[name] if dump else (None, None)
            for g, (r, p) in enumerate(zip(kept, phys)):
                Wg = W[g * gs * hd:(g + 1) * gs * hd]
                if dump:   # VT stacks the groups' down-projections in group order
                    start = sum(kept[:g])
                    B, A = (t.to(W.device, torch.float64) for t in (Us[g], VT[start:start + r]))
                else:
                    B, A = factorize(Wg, r, S)
                w_err.append((torch.linalg.norm(Wg - B @ A) / torch.linalg.norm(Wg)).item())
                if S is not None:
                    a_err.append(activation_error(Wg, B @ A, S))
                new.U[g].weight.copy_(nn.functional.pad(B, (0, p - r)))      # zero columns
                A_rows.append(nn.functional.pad(A, (0, 0, 0, p - r)))          # zero rows
            new.VT.weight.copy_(torch.cat(A_rows))
            setattr(attn, proj, new)
            modules[name] = {"logical": ranks[name], "kept": kept, "physical": phys, "policy": policy.text,
                             "expected": [d["expected"] for d in groups] if policy.table else None,
                             "weight_rel_err": w_err, "activation_rel_err": a_err or None}
        progress(f"palu: layer {i + 1}/{len(layers)} factored ({time.perf_counter() - t0:.1f} s)")
    facts = summarize_ranks(modules, config, gs, hd)
    facts.update(rank_info=rank_info, factors=factors, svd=pcfg["svd"], ratio=pcfg["ratio"], group_size=gs,
                 cache=pcfg["cache"], alignment=align.facts(policy, shaped, dims), calibration=calib, modules=modules)
    progress(f"palu: K/V factors {factors}")
    return facts


def group_modules(lm, ranks, S_all, policy):
    """Each K/V group as an alignment module; its gains (for the budget policy) are the share of the
    group's (whitened) singular-value energy kept at each rank, the error PaLU's SVD minimizes."""
    config = lm.spec.config
    _, _, hd = geometry(config)
    layers, out = lm.model.model.layers, []
    for name, rs in ranks.items():
        full = config.num_key_value_heads * hd // len(rs)   # a group's output rows, gs x head_dim
        gains = None
        if policy.kind == "budget":
            i = int(name.split(".")[2])
            W = getattr(layers[i].self_attn, name.rsplit(".", 1)[1]).weight.double()
            S = S_all[i].to(W.device) if S_all is not None else None
        for g, r in enumerate(rs):
            if policy.kind == "budget":
                Wg = W[g * full:(g + 1) * full]
                energy = torch.linalg.svdvals(Wg @ S if S is not None else Wg) ** 2
                gains = torch.cat([torch.zeros(1, dtype=energy.dtype, device=energy.device),
                                   energy.cumsum(0) / energy.sum()]).cpu()
            out.append(align.Module(f"{name}.group{g}", r, full, config.hidden_size + full, gains,
                                    {"op": "lowrank", "sweep": "r", "d_in": config.hidden_size}))
    return out


def summarize_ranks(modules, config, gs, hd):
    logical = [r for m in modules.values() for r in m["kept"]]
    phys = [r for m in modules.values() for r in m["physical"]]
    full = gs * hd * len(logical)
    hidden = config.hidden_size
    orig_params = len(modules) * hidden * config.num_key_value_heads * hd
    factor_params = sum(hidden * r + r * gs * hd for r in phys)
    return {
        "groups_per_module": config.num_key_value_heads // gs, "group_full_rank": gs * hd,
        "logical_rank_mean": sum(logical) / len(logical), "physical_rank_mean": sum(phys) / len(phys),
        "kv_compression_logical": 1 - sum(logical) / full, "kv_compression_physical": 1 - sum(phys) / full,
        "aligned_share": dimtable.aligned_share(phys),
        "factor_params": factor_params, "original_params": orig_params,
        "factor_param_ratio": factor_params / orig_params,
        "latent_values_per_token": sum(phys),
        "kv_values_per_token_baseline": 2 * config.num_hidden_layers * config.num_key_value_heads * hd,
    }
