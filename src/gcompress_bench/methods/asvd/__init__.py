"""ASVD: activation-aware SVD of every linear in attention and MLP (q, k, v, o, gate, up, down).

Each weight W is scaled by its input channels' mean activation magnitude, S = diag(mean|x| ** alpha),
truncated to rank r in that scaled space, and factored as W ~= B A with A = Σ½ Vᵀ S⁻¹ and B = U Σ½.
Ranks come from one parameter budget (`--asvd-ratio` of the targeted weights' parameters): every
module keeps the smallest rank whose scaled truncation error stays under a threshold shared by all
modules, and a binary search sets the threshold so the budget holds. Modules whose spectrum is
steep keep little rank and flat ones keep much, so the ranks come out irregular, as real ASVD ranks
do; a module whose rank would not save parameters stays dense.

This module declares the method; lowrank.py factors the model, imported only when a run compresses.
"""
from dataclasses import dataclass

from gcompress_bench.fmt import num
from gcompress_bench.methods import Method, Option, align, calibration, register


def headline(facts):
    share = facts["aligned_share"]["8"]
    over = facts["params_kept_ratio"] > facts["ratio"] + 1e-9   # rounding up can exceed the budget
    return ("WARNING: more parameters kept than requested; " if over else "") + (f"requested {facts['ratio']} of the parameters kept; kept {facts['params_kept_ratio']:.4f} "
            f"({facts['factored']} of {facts['factored'] + facts['dense']} linears factored"
            + (f", ranks {facts['rank_min']}..{facts['rank_max']}, {share:.0%} aligned to 8" if facts["factored"] else "")
            + ")")


def _markdown(f):
    lines = ["", "## ASVD compression", "",
             f"- {headline(f)}",
             f"- activation scaling alpha {f['alpha']}, shared error threshold {f['threshold']:.4g}",
             *align.markdown(f.get("alignment")),
             f"- parameters of q/k/v/o/gate/up/down: {f['params_kept']:,} of {f['params_original']:,}",
             "- aligned share of the factored ranks in memory: " + ", ".join(
                 f"{a}: {num(v, 3) if v is not None else 'n/a'}" for a, v in f["aligned_share"].items()),
             f"- calibration: {f['calibration']['source']}, {f['calibration']['windows']} x "
             f"{f['calibration']['seq_len']} tokens",
             f"- verification on {f['verification']['probe_tokens']} probe tokens: max |logit diff| "
             f"{num(f['verification']['max_abs_logit_diff'])}, top-1 agreement {num(f['verification']['top1_agreement'], 3)}",
             f"- greedy generation after compression: {f['verification']['generation']!r}",
             f"- compression took {f['compress_s']} s", "",
             "| module | out x in | rank before alignment | with weights | in memory | scaled rel. error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {m['out']} x {m['in']} | "
              + (" | ".join(str(m.get(k, m['rank'])) for k in ("logical", "rank", "physical")) if m['rank'] is not None
                 else "dense | dense | dense") + f" | {num(m['scaled_rel_err'])} |" for name, m in f["modules"].items()]
    return lines


@dataclass
class Plan:
    calibration: tuple   # (token ids, facts)


class Asvd(Method):
    name = "asvd"
    description = "ASVD: activation-aware SVD of every attention and MLP linear, ranks from one parameter budget"
    options = (
        Option("ratio", "float", 0.85, "fraction of the linears' parameters kept", minimum=0, maximum=1,
               exclusive_minimum=True),
        Option("alpha", "float", 0.5, "activation scaling exponent: S = diag(mean|x| ** alpha)", minimum=0),
        *calibration.OPTIONS,
    )
    headline = staticmethod(headline)
    markdown = staticmethod(_markdown)

    def plan(self, opts, spec, tokenizer):
        return Plan(calibration.windows(tokenizer, spec.config, opts, self.name))

    def compress(self, lm, plan, opts, progress):
        from gcompress_bench.methods.asvd import lowrank
        return lowrank.compress(lm, plan, opts, progress)


    def inputs(self, plan):
        return {"asvd calibration": plan.calibration[1]["source"]}


register(Asvd())
