"""The method interface and the harness every compression runs in (kvpress's presses: the base class owns
the wiring, a method implements only what is its own).

A method implements its `options`, `plan` (checks before weights load) and `compress` (the model changed
in place; returns its facts), plus how its facts read (`headline`, `markdown`) and which inputs it reads
(`inputs`). `apply` is the harness and is not overridden: it times the compression, records its peak
memory, runs the model on a fixed probe before and after, and stops the run when the result is broken
(non-finite logits, or top-1 agreement below half of the floor measured for that method in
data/methods/agreement.yaml).
"""
import functools
import time
from dataclasses import dataclass

import yaml

from gcompress_bench import REPO_ROOT

AGREEMENT_FILE = REPO_ROOT / "data" / "methods" / "agreement.yaml"


@dataclass(frozen=True)
class Option:
    """One option of a method: `--<method>-<key>` on the command line, `<method>.<key>` in the config."""
    key: str
    kind: str                 # str | int | float (config.OPTIONS kinds)
    default: object
    help: str
    choices: tuple = None     # allowed values of a str option
    minimum: float = None     # numbers: smallest allowed value
    maximum: float = None     # numbers: largest allowed value
    exclusive_minimum: bool = False


class CompressionFailed(Exception):
    """A compression no cell may measure: the run stops and says why (with the facts, when there are some)."""

    def __init__(self, why, facts=None):
        super().__init__(why)
        self.facts = facts


@functools.cache
def agreement_tables():
    return yaml.safe_load(AGREEMENT_FILE.read_text())


class Method:
    """The identity: what `baseline` is, and what every method starts from."""
    name = "baseline"
    description = "the model as loaded"
    options = ()

    def default_align(self, opts):
        """What `--align-policy method` means for this method."""
        return "none"

    def plan(self, opts, spec, tokenizer):
        """Every check that can run before weights load (raises UsageError), and what compress needs."""
        return None

    def compress(self, lm, plan, opts, progress):
        """Change lm.model in place; return the facts recorded with the run. The identity changes nothing."""
        return None

    def agreement_table(self, opts):
        """Which of this method's tables in data/methods/agreement.yaml its options were measured as."""
        return "default"

    def kept(self, facts):
        """The fraction kept that the agreement table is indexed by."""
        return facts.get("params_kept_ratio")

    def verified_as(self, opts, facts):
        """How a failed verification names what was compressed."""
        return f"{self.name} ({self.agreement_table(opts)})"

    def headline(self, facts):
        return None

    def markdown(self, facts):
        return []

    def inputs(self, plan):
        """{what: where it comes from} for --check-only; a value containing FALLBACK is reported as one."""
        return {}

    def apply(self, lm, plan, opts, progress):
        """The harness (not overridden): time, peak memory and verification around `compress`."""
        if type(self).compress is Method.compress:
            return None   # nothing was changed: nothing to time or verify
        import torch  # here, so that reading options and help never imports torch

        from gcompress_bench.methods import verify
        t0 = time.perf_counter()
        cuda = lm.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(lm.device)
        probe = verify.probe_ids(lm)
        before = verify.probe_logits(lm, probe)
        facts = self.compress(lm, plan, opts, progress)
        facts.update(compress_s=round(time.perf_counter() - t0, 3),
                     memory={"peak_allocated_bytes": torch.cuda.max_memory_allocated(lm.device) if cuda else None,
                             "peak_reserved_bytes": torch.cuda.max_memory_reserved(lm.device) if cuda else None},
                     verification=verify.compare(lm, before, probe))
        key = self.agreement_table(opts)
        table = agreement_tables().get(self.name, {}).get(key)
        facts["agreement_floor"] = {"table": f"{self.name}.{key}", "measured": table["measured"]} if table else None
        progress(f"{self.name}: {self.headline(facts)}; top-1 agreement on the probe "
                 f"{facts['verification']['top1_agreement']:.3f} ({facts['compress_s']} s)")
        why = verify.broken(facts["verification"], self.kept(facts), table and table["floors"],
                                 self.verified_as(opts, facts), lm.spec.synthetic)
        if why:
            raise CompressionFailed(f"verification: {why}", facts)
        return facts
