"""Test plug-in method, registered from outside the package (GCOMPRESS_METHODS=tests.plugins.toy_method):
structured pruning of every MLP's intermediate channels, the ones whose gate, up and down weights
have the smallest norm. It leaves an irregular intermediate size, as LLM-Pruner does."""
import torch
from torch import nn

from gcompress_bench.methods import Method, Option, register


def _shrunk(linear, index, dim):
    w = linear.weight.index_select(dim, index)
    new = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
    new.weight.data.copy_(w)
    return new


class MlpPrune(Method):
    name = "mlpprune"
    description = "drops the smallest-norm MLP intermediate channels"
    options = (Option("keep", "float", 0.9, "fraction of intermediate channels kept", minimum=0, maximum=1,
                      exclusive_minimum=True),)

    def plan(self, opts, spec, tokenizer):
        return max(1, int(opts["keep"] * spec.config.intermediate_size))

    @torch.no_grad()
    def compress(self, lm, plan, opts, progress):
        for layer in lm.model.model.layers:
            mlp = layer.mlp
            score = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
            index = score.topk(plan).indices.sort().values
            mlp.gate_proj, mlp.up_proj = _shrunk(mlp.gate_proj, index, 0), _shrunk(mlp.up_proj, index, 0)
            mlp.down_proj = _shrunk(mlp.down_proj, index, 1)
        progress(f"mlpprune: every MLP keeps {plan} of {lm.spec.config.intermediate_size} channels")
        return {"keep": opts["keep"], "intermediate": plan, "original": lm.spec.config.intermediate_size}

    def headline(self, facts):
        return f"MLP intermediate {facts['intermediate']} of {facts['original']}"

    def markdown(self, facts):
        return ["", "## mlpprune", "", f"- {self.headline(facts)}"]


register(MlpPrune())
