"""PaLU: group-head low-rank decomposition (G-LRD) of every layer's k_proj and v_proj.

Each group of `group_size` consecutive KV heads gets W_g ~= B_g A_g. The stacked A_g form one
Linear whose output (the latent) is what PaLU's kernel path caches; one B_g per group rebuilds
the group's K or V rows. Whitened SVD (SVD-LLM style, PaLU's default) fits the factors to the
layer's input activations, so a few huge outlier channels no longer dominate the error.

This module declares the method (options, plan, facts); factors.py computes the factors and latent.py
the latent cache path, both imported only when a run uses them.
"""
from dataclasses import dataclass

from gcompress_bench import UsageError
from gcompress_bench.fmt import num as report_num
from gcompress_bench.methods import Method, Option, align, calibration, register

KERNELS = ("auto", "fused", "unfused")   # the latent cache's decode attention

EFFECTIVE_TOLERANCE = 0.05   # |ranks kept - ratio| above this is called out (PaLU's rounding to 32 moves 0.7 to 0.6875)


def headline(facts):
    """Requested ratio next to the effective KV compression; says so when rounding or a rank file moved it."""
    kept = 1 - facts["kv_compression_logical"]
    line = (f"requested ratio {facts['ratio']} (KV cut {1 - facts['ratio']:.4f}); effective KV cut "
            f"{facts['kv_compression_logical']:.4f} (ranks kept {kept:.4f}, mean rank {facts['logical_rank_mean']:.1f} "
            f"of {facts['group_full_rank']})")
    if kept >= 1:
        return "WARNING: no compression at all: every rank is full; " + line
    if abs(kept - facts["ratio"]) > EFFECTIVE_TOLERANCE:
        return "WARNING: the effective compression differs from the requested ratio; " + line
    return line


def _markdown(p):
    """The facts of one compression, for run summaries and comparisons."""
    v = p["verification"]
    calib = p["calibration"] or {}
    errs = [e for m in p["modules"].values() for e in (m["activation_rel_err"] or m["weight_rel_err"])]
    finite = [e for e in errs if e is not None]   # a non-finite number is stored as null
    kind = "activation-weighted" if p["svd"] == "whiten" else "weight"
    requested = sorted({r for m in p["modules"].values() for r in m["logical"]})
    ranks = sorted({r for m in p["modules"].values() for r in m.get("kept", m["logical"])})
    phys = sorted({r for m in p["modules"].values() for r in m["physical"]})
    return ["", "## PaLU compression", "",
            f"- ratio {p['ratio']}, group size {p['group_size']} ({p['groups_per_module']} groups/module, "
            f"full rank {p['group_full_rank']}), SVD {p['svd']}",
            *align.markdown(p.get("alignment")),
            f"- {headline(p)}",
            f"- ranks from: {p['rank_info'].get('chosen') or p['rank_info'].get('path') or p['rank_info']['source']}; "
            f"factors {p.get('factors', 'recomputed')}",
            f"- ranks before alignment {requested}, with weights {ranks}, in memory {phys}; aligned share (in memory) "
            f"{p['aligned_share']}",
            f"- KV compression 1 - sum(r)/sum(gs*head_dim): logical {p['kv_compression_logical']:.4f}, "
            f"physical {p['kv_compression_physical']:.4f}; latent values/token {p['latent_values_per_token']} "
            f"vs {p['kv_values_per_token_baseline']} K+V values/token in the baseline",
            f"- factor params {p['factor_params']:,} vs original {p['original_params']:,} "
            f"({p['factor_param_ratio']:.3f}x)",
            f"- calibration: {calib.get('source', 'none (plain SVD)')}, {calib.get('windows', '-')} x "
            f"{calib.get('seq_len', '-')} tokens, sha256 {calib.get('sha256')}, cache hit {calib.get('cache_hit')}",
            f"- {kind} relative error per group: mean {report_num(sum(finite) / len(finite) if finite else None)}, max "
            f"{report_num(max(finite, default=None))}" + (f" ({len(errs) - len(finite)} not finite)" if finite != errs else ""),
            f"- verification on {v['probe_tokens']} probe tokens: max |logit diff| {report_num(v['max_abs_logit_diff'])}, "
            f"mean {report_num(v['mean_abs_logit_diff'])}, top-1 agreement {report_num(v['top1_agreement'], 3)}",
            f"- greedy generation after compression: {v['generation']!r}",
            f"- compression took {p['compress_s']} s",
            f"- KV cache: the latents (physical ranks): {1 - p['kv_compression_physical']:.4f} of the baseline's "
            f"K/V bytes; K rebuilt with RoPE at attention, V folded into o_proj; decode attention "
            f"{p.get('latent_kernel', 'unfused')}" if p.get("cache") == "latent" else
            "- KV cache: this path keeps full reconstructed K and V in the cache (PaLU's HF path): "
            "no KV memory is saved here"]


@dataclass
class Plan:
    """Everything decided before weights load: ranks, where they came from, and the calibration windows."""
    ranks: dict
    rank_info: dict
    calibration: tuple = None   # (token ids, facts) when the factors are whitened here


class Palu(Method):
    name = "palu"
    description = "PaLU: group-head low-rank K/V projections (G-LRD), whitened SVD"
    options = (
        Option("ratio", "float", 0.7, "fraction of each group's rank kept", minimum=0, maximum=1,
               exclusive_minimum=True),
        Option("group_size", "int", 4, "KV heads per group; must divide the KV and attention heads", minimum=1),
        Option("ranks", "str", None, "a rank file (head_wise_ranks JSON), a PaLU dump dir, or a ratio dir to search"),
        Option("factors", "str", "load", "load (a PaLU dump's own K/V factors, when --palu-ranks holds its weights) "
                                         "or recompute", choices=("load", "recompute")),
        Option("svd", "str", "whiten", "whiten (SVD-LLM style, PaLU's default) or plain", choices=("whiten", "plain")),
        Option("cache", "str", "full", "full (K and V cached, PaLU's HF path) or latent (the latents cached)",
               choices=("full", "latent")),
        Option("latent_kernel", "str", "unfused", "latent cache's decode attention: unfused (torch; the faster one "
                                                  "measured), fused (one Triton kernel rebuilds K in registers; CUDA), "
                                                  "or auto (fused where it runs)",
               choices=KERNELS),
        *calibration.OPTIONS,
    )
    headline = staticmethod(headline)
    markdown = staticmethod(_markdown)

    def default_align(self, opts):
        """PaLU's own rule rounds uniform ranks to multiples of 32; a rank file's ranks are used as given."""
        return "none" if opts.get("ranks") else "round:32"

    def plan(self, opts, spec, tokenizer):
        from gcompress_bench import models
        from gcompress_bench.methods.palu import factors, latent
        if opts["cache"] == "latent":
            latent.check_supported(spec.config, spec.name)
            latent.choose_kernel(opts["latent_kernel"], models.pick_device("auto"))
        policy = align.parse(opts["align_policy"])
        ranks, info = factors.allocate(opts, spec.config, spec.name, spec.canonical)
        if info.get("factors_from") and policy.kind in ("round", "budget"):
            raise UsageError(f"--align-policy: {policy.text!r} would change the ranks of the PaLU dump "
                             f"{info['factors_from']['dir']}, whose factors are loaded as stored; allowed: none, pad:N, "
                             "or --palu-factors recompute")
        whiten_here = opts["svd"] == "whiten" and not info.get("factors_from")
        return Plan(ranks, info, calibration.windows(tokenizer, spec.config, opts, self.name) if whiten_here else None)

    def compress(self, lm, plan, opts, progress):
        from gcompress_bench.methods.palu import factors, latent
        facts = factors.compress(lm, plan, opts, progress)
        if opts["cache"] == "latent":   # before verification: the probe runs the path the cells measure
            facts["latent_kernel"] = latent.enable(lm, opts["latent_kernel"])
        return facts

    def agreement_table(self, opts):
        return opts["svd"]

    def kept(self, facts):
        return 1 - facts["kv_compression_logical"]

    def verified_as(self, opts, facts):
        return f"{opts['svd']} SVD ({facts['factors']})"

    def inputs(self, plan):
        info = plan.rank_info
        out = {"palu ranks": info.get("chosen") or info.get("path") or info["source"]}
        if info.get("factors_from"):
            out["palu factors"] = f"loaded from {info['factors_from']['dir']}"
        elif plan.calibration:
            out["palu calibration"] = plan.calibration[1]["source"]
        return out


register(Palu())
