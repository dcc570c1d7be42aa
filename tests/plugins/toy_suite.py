"""Test plug-in suite, registered from outside the package (GCOMPRESS_SUITES=tests.plugins.toy_suite): the
model's mean next-token entropy, in nats, over seeded random prompts of each length. It declares everything
a suite owns (options and their defaults, grid, checks, measurement, progress line, table, settings) and
nothing else in the repository names it."""
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import dash_unless_ok, table


def entropy(lm, length, seed):
    import torch
    ids = torch.randint(0, lm.spec.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logp = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits.double().log_softmax(-1)
    return {"entropy": float(-(logp.exp() * logp).sum(-1).mean()), "tokens": length}


class Entropy(Suite):
    marker = job = "entropy"
    description = "mean next-token entropy over seeded random prompts"
    options = (("--entropy-lengths", "entropy.lengths", "ints", "entropy: prompt lengths, each its own cell"),)
    defaults = {"lengths": [8, 16]}
    grid = ("lengths",)
    settings = ("entropy.lengths", "seed")
    compare_keys = ("entropy", "tokens")

    def ids(self, g):
        return [(f"L{n}", {"length": n}) for n in g["lengths"]]

    def longest(self, g):
        return {"--entropy-lengths": max(g["lengths"])}

    def measure(self, cell, run, lm, clock, meter):
        from gcompress_bench.measure.cell import run_cell
        return run_cell(entropy, lm.device, lm=lm, seed=run.cfg["seed"], **cell.params)

    def progress(self, rec):
        return f" entropy {rec['entropy']:.3f} nats over {rec['tokens']} tokens"

    def markdown(self, s, rows):
        return table("entropy (nats per next token)", ["entropy", "tokens"], rows,
                     dash_unless_ok(2, lambda c: [f"{c['entropy']:.4f}", str(c["tokens"])]))


register(Entropy())
