"""Structured pruning in the manner of LLM-Pruner: whole MLP intermediate channels and, optionally, whole
KV head groups are removed, so the model stays dense and only its widths shrink.

Importance is first order (Taylor): for a unit with activation h (an MLP channel: its entry of down_proj's
input; a KV head group: its query heads' columns of o_proj's input), |Σ_tokens h · ∂L/∂h| estimates how
much the causal LM loss on the calibration windows moves when h is zeroed, which is exactly what removing
the unit does. The weights stay frozen; gradients flow through the activations only, one window at a time.

Ranking is global, on the raw scores: each estimates the same quantity (a change of the loss), so they
compare across layers as they are. Dividing each by its layer's mean score, which spreads the pruning more
evenly, was measured worse on SmolLM2 at every ratio (perplexity 39.9 against 37.5 at 0.85, 54.1 against
46.9 at 0.8; docs/QUALITY.md). Layers still differ in how unequal their units are, so the widths come out
irregular, as LLM-Pruner's do. Head groups go first (`--prune-heads` of all groups, at most all but one
per layer); channels then fill the parameter budget left (`--prune-ratio` of the MLP parameters, plus
the attention ones when heads are pruned), at least one per layer. The widths then go through the run's
alignment policy (align.py): the top `kept` channels keep their weights, and `physical` pads them with
zero channels, which leaves the outputs unchanged.

This module declares the method; taylor.py scores and prunes, imported only when a run compresses.
"""
from dataclasses import dataclass

from gcompress_bench import UsageError
from gcompress_bench.fmt import num
from gcompress_bench.methods import Method, Option, align, calibration, register


def headline(facts):
    over = facts["params_kept_ratio"] > facts["ratio"] + 1e-9   # the alignment policy rounded widths up
    layers = len(facts["modules"])
    return ("WARNING: more parameters kept than requested; " if over else "") + (
        f"requested {facts['ratio']} of the parameters kept; kept {facts['params_kept_ratio']:.4f} "
        f"(MLP widths {facts['width_min']}..{facts['width_max']} of {facts['intermediate_size']}, "
        f"{facts['aligned_share']['8']:.0%} aligned to 8; {facts['kv_heads_removed']} of {layers * facts['kv_heads']} "
        "KV heads removed)")


def _markdown(f):
    v = f["verification"]
    lines = ["", "## Structured pruning (Taylor importance)", "",
             f"- {headline(f)}",
             *align.markdown(f["alignment"]),
             f"- parameters of {'q/k/v/o/' if f['heads'] > 0 else ''}gate/up/down: {f['params_kept']:,} kept of "
             f"{f['params_original']:,} ({f['params_physical']:,} in memory)",
             f"- calibration: {f['calibration']['source']}, {f['calibration']['windows']} x "
             f"{f['calibration']['seq_len']} tokens",
             f"- verification on {v['probe_tokens']} probe tokens: max |logit diff| {num(v['max_abs_logit_diff'])}, "
             f"top-1 agreement {num(v['top1_agreement'], 3)}",
             f"- greedy generation after compression: {v['generation']!r}",
             f"- compression took {f['compress_s']} s", "",
             "| layer MLP | logical | kept | physical | KV heads kept |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {m['logical']} | {m['kept']} | {m['physical']} | "
              f"{'all' if len(m['kv_heads_kept']) == f['kv_heads'] else m['kv_heads_kept']} |"
              for name, m in f["modules"].items()]
    return lines


@dataclass
class Plan:
    calibration: tuple   # (token ids, facts)
    policy: align.Policy


class Prune(Method):
    name = "prune"
    description = "LLM-Pruner-style structured pruning: MLP channels and KV head groups by Taylor importance"
    options = (
        Option("ratio", "float", 0.85, "fraction of the targeted parameters kept (MLP gate/up/down, plus "
                                       "q/k/v/o when heads are pruned)", minimum=0, maximum=1, exclusive_minimum=True),
        Option("heads", "float", 0.0, "fraction of all KV head groups removed (each with its query heads), in [0, 1)",
               minimum=0, maximum=1),
        *calibration.OPTIONS,
    )
    headline = staticmethod(headline)
    markdown = staticmethod(_markdown)

    def plan(self, opts, spec, tokenizer):
        if opts["heads"] >= 1:
            raise UsageError(f"--prune-heads: {opts['heads']} is not allowed; it must be in [0, 1)")
        policy = align.parse(opts.get("align_policy", "none"))
        return Plan(calibration.windows(tokenizer, spec.config, opts, self.name), policy)

    def compress(self, lm, plan, opts, progress):
        from gcompress_bench.methods.prune import taylor
        return taylor.compress(lm, plan, opts, progress)

    def inputs(self, plan):
        return {"prune calibration": plan.calibration[1]["source"]}


register(Prune())
