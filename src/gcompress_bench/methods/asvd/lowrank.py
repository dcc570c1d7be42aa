"""ASVD's factorization: activation scales, spectra, ranks from one parameter budget, and the factored linears."""
import time

import torch
from torch import nn

from gcompress_bench import dimtable
from gcompress_bench.methods import CompressionFailed, align
from gcompress_bench.methods.calibration import cached

TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


class LowRankLinear(nn.Module):
    """W ~= B A: `A` projects down to the rank, `B` back up (with the original bias)."""

    def __init__(self, A, B, bias):
        super().__init__()
        self.A = nn.Linear(A.shape[1], A.shape[0], bias=False, dtype=A.dtype, device=A.device)
        self.B = nn.Linear(B.shape[1], B.shape[0], bias=bias is not None, dtype=B.dtype, device=B.device)
        with torch.no_grad():
            self.A.weight.copy_(A)
            self.B.weight.copy_(B)
            if bias is not None:
                self.B.bias.copy_(bias)

    def forward(self, x):
        return self.B(self.A(x))

    def stages(self):
        """(the Linear applied to the input, the rest): what a fused layout stacks with its neighbours."""
        return self.A, self.B


def _modules(model):
    return {f"model.layers.{i}.{t}": layer.get_submodule(t) for i, layer in enumerate(model.model.layers)
            for t in TARGETS}


@torch.inference_mode()
def activation_means(lm, ids):
    """({module: mean |x| per input channel} over the calibration windows, facts): what calibration.cached
    keeps, so a run at another ratio or alpha skips the forward."""
    t0 = time.perf_counter()
    sums, counts, handles = {}, {}, []

    def hook(name):
        def add(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.abs().sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return add
    for name, mod in _modules(lm.model).items():
        handles.append(mod.register_forward_pre_hook(hook(name)))
    try:
        for row in ids.to(lm.device):
            lm.model(input_ids=row[None], use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    means = {}
    for name, total in sums.items():
        means[name] = total / counts[name]
        if not torch.isfinite(means[name]).all():
            raise CompressionFailed(f"the calibration activations of {name} are not finite: the model's own "
                                    "forward gives NaN or inf")
    return means, {"calibration_s": round(time.perf_counter() - t0, 3)}


def _scaled_gram(W, s):
    """The smaller Gram matrix of M = W diag(s), and whether it is M Mᵀ (rows) or Mᵀ M (columns)."""
    M = W.double() * s
    rows = M.shape[0] <= M.shape[1]
    return M, (M @ M.T if rows else M.T @ M), rows


def spectrum(W, s):
    """Singular values of W diag(s), largest first, on the host (the rank search reads them item by item)."""
    _, G, _ = _scaled_gram(W, s)
    return torch.linalg.eigvalsh(G).flip(0).clamp_min(0).sqrt().cpu()


def factorize(W, s, r):
    """B (out, r), A (r, in) with B A the rank-r truncation of W diag(s), unscaled: W ~= B A."""
    M, G, rows = _scaled_gram(W, s)
    evals, vecs = torch.linalg.eigh(G)
    sig = evals.flip(0)[:r].clamp_min(0).sqrt()
    vecs = vecs.flip(1)[:, :r]
    safe = sig.clamp_min(sig[0] * 1e-12 if len(sig) else 1e-12)
    U, Vt = (vecs, (vecs.T @ M) / safe[:, None]) if rows else ((M @ vecs) / safe, vecs.T)
    root = sig.sqrt()
    return U * root, (root[:, None] * Vt) / s


def dense_above(out_f, in_f):
    """A rank at or above this saves no parameters: the module stays dense."""
    return (out_f * in_f) // (out_f + in_f)


def allocate(spectra, shapes, ratio):
    """{module: rank or None (dense)} meeting `ratio` of the modules' parameters, and the threshold.
    Each module keeps the smallest rank whose relative scaled truncation error is <= tau."""
    budget = ratio * sum(o * i for o, i in shapes.values())
    tails = {}
    for name, sig in spectra.items():   # tails[r] = relative error of keeping r singular values
        energy = (sig ** 2).flip(0).cumsum(0).flip(0)
        tails[name] = torch.cat([(energy / energy[0]).sqrt(), torch.zeros(1, dtype=energy.dtype)])

    def ranks_at(tau):
        out = {}
        for name, tail in tails.items():
            r = int((tail > tau).sum())
            out[name] = r if r < dense_above(*shapes[name]) else None
        return out

    def params(ranks):
        return sum(o * i if ranks[n] is None else ranks[n] * (o + i) for n, (o, i) in shapes.items())

    lo, hi = 0.0, 1.0    # tau = 0 keeps every rank (all dense); tau = 1 keeps none
    if params(ranks_at(0.0)) <= budget:
        return ranks_at(0.0), 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if params(ranks_at(mid)) <= budget else (mid, hi)
    return ranks_at(hi), hi


@torch.inference_mode()
def compress(lm, plan, opts, progress):
    t0 = time.perf_counter()
    ids, calib = plan.calibration
    progress(f"asvd: calibration on {calib['windows']} x {calib['seq_len']} tokens of {calib['source']}")
    means, cache_facts = cached(lm, "asvd-scales", calib, ids, activation_means, progress)
    scales = {name: m.clamp_min(1e-6).double() ** opts["alpha"] for name, m in means.items()}
    mods = _modules(lm.model)
    shapes = {n: tuple(m.weight.shape) for n, m in mods.items()}

    def spectra_of(_lm, _ids):   # a Gram matrix and its eigenvalues per module: half of a compression's time
        t = time.perf_counter()
        sig = {n: spectrum(m.weight, scales[n]) for n, m in mods.items()}
        return sig, {"spectra_s": round(time.perf_counter() - t, 3)}
    spectra, spectra_facts = cached(lm, "asvd-spectra", {**calib, "alpha": opts["alpha"]}, ids, spectra_of, progress)
    spectra = {n: sig.cpu() for n, sig in spectra.items()}
    ranks, tau = allocate(spectra, shapes, opts["ratio"])
    policy = align.parse(opts["align_policy"])
    shaped = [align.Module(n, r, dense_above(*shapes[n]) - 1, sum(shapes[n]), _energy_kept(spectra[n]),
                           {"op": "lowrank", "sweep": "r", "d_in": shapes[n][1], "d_out": shapes[n][0]})
              for n, r in ranks.items() if r is not None]
    dims = align.apply(policy, shaped)
    progress(f"asvd: ranks allocated ({len(shaped)} of {len(ranks)} modules factored, threshold {tau:.4g}, "
             f"alignment {policy.text}; {time.perf_counter() - t0:.1f} s)")
    modules, layers = {}, len(lm.model.model.layers)
    for name, mod in mods.items():
        d = dims.get(name, {"logical": None, "kept": None, "physical": None, "expected": None})
        r, tail = d["kept"], spectra[name]
        err = 0.0 if r is None else float(((tail[r:] ** 2).sum() / (tail ** 2).sum()).sqrt())
        modules[name] = {"rank": r, "logical": d["logical"], "physical": d["physical"], "expected": d["expected"],
                         "out": shapes[name][0], "in": shapes[name][1], "scaled_rel_err": err}
        if r is not None:
            B, A = factorize(mod.weight, scales[name], r)
            pad = d["physical"] - r   # zero rows of A and columns of B: the product is unchanged
            parent, attr = name.rsplit(".", 1)
            lm.model.get_submodule(parent).__setattr__(attr, LowRankLinear(
                nn.functional.pad(A, (0, 0, 0, pad)).to(mod.weight.dtype),
                nn.functional.pad(B, (0, pad)).to(mod.weight.dtype), mod.bias))
        if name.endswith(TARGETS[-1]):
            progress(f"asvd: layer {int(name.split('.')[2]) + 1}/{layers} factored ({time.perf_counter() - t0:.1f} s)")
    facts = _summary(modules, opts, tau)
    facts.update(alignment=align.facts(policy, shaped, dims), calibration={**calib, **cache_facts},
                 spectra=spectra_facts)
    return facts


def _energy_kept(sig):
    """gains[r] = share of the scaled spectrum's energy kept at rank r: the error ASVD's threshold bounds."""
    energy = (sig.double() ** 2).cumsum(0)
    return torch.cat([torch.zeros(1, dtype=energy.dtype), energy / energy[-1]])


def _summary(modules, opts, tau):
    ranks = [m["physical"] for m in modules.values() if m["rank"] is not None]
    orig = sum(m["out"] * m["in"] for m in modules.values())
    kept = sum(m["out"] * m["in"] if m["rank"] is None else m["rank"] * (m["out"] + m["in"]) for m in modules.values())
    return {"ratio": opts["ratio"], "alpha": opts["alpha"], "threshold": tau,
            "modules": modules, "factored": len(ranks), "dense": len(modules) - len(ranks),
            "params_original": orig, "params_kept": kept, "params_kept_ratio": kept / orig,
            "rank_min": min(ranks, default=None), "rank_max": max(ranks, default=None),
            "aligned_share": dimtable.aligned_share(ranks)}
