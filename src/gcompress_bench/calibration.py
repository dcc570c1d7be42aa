"""What compression methods fit their factors on and check them against: calibration windows of text
that is never the perplexity evaluation text, and a fixed probe on which the compressed model's
logits are compared with the original's."""
import hashlib
import time

import torch

from . import REPO_ROOT, UsageError
from .method import CompressionFailed, Option
from .ppl import CORPUS_CHOICES, cached_wikitext2, read_text_file

CALIB_TEXT = REPO_ROOT / "data" / "calibration.txt"
# the options of every method that calibrates (as --<method>-calib, --<method>-calib-samples, ...)
OPTIONS = (
    Option("calib", "str", "auto", "calibration text: auto (WikiText-2 train if cached, else data/calibration.txt), "
                                   "wikitext2, or a text file"),
    Option("calib_samples", "int", 8, "calibration windows", minimum=1),
    Option("calib_seq_len", "int", 512, "tokens per calibration window", minimum=1),
)
PROBE_TOKENS = 256   # enough positions that top-1 agreement moves in steps of 0.4%, not 1.6%


def text(choice, flag):
    """(text, source): WikiText-2 train from the local HF datasets cache, the project's calibration text
    (a FALLBACK, said so), or a user's file."""
    if choice in ("auto", "wikitext2"):
        found, note = cached_wikitext2("train")
        if found is not None:
            return found, note
        if choice == "wikitext2":
            raise UsageError(f"{flag}: WikiText-2 train is not in the local HF datasets cache ({note})")
        return CALIB_TEXT.read_text(), f"{CALIB_TEXT.relative_to(REPO_ROOT)} (FALLBACK: WikiText-2 train not in the HF cache)"
    return read_text_file(flag, choice, CORPUS_CHOICES), choice


def windows(tokenizer, config, opts, method):
    """(ids (n, t), facts): exactly the `calib_samples` x `calib_seq_len` tokens a method's options ask
    for, or a usage error; random tokens for a model without a tokenizer (random weights)."""
    n, t = opts["calib_samples"], opts["calib_seq_len"]
    if tokenizer is None:
        ids = torch.randint(0, config.vocab_size, (n, t), generator=torch.Generator().manual_seed(0))
        return ids, {"source": "random tokens (model has no tokenizer)", "sha256": None, "windows": n, "seq_len": t}
    found, source = text(opts["calib"], f"--{method}-calib")
    tokens = tokenizer(found, return_tensors="pt").input_ids[0]
    if len(tokens) < n * t:
        raise UsageError(f"--{method}-calib: {source} has {len(tokens)} tokens, fewer than the {n} x {t} = {n * t} "
                         f"that --{method}-calib-samples and --{method}-calib-seq-len ask for; allowed: a longer "
                         "text or fewer samples")
    return tokens[: n * t].view(n, t), {"source": source, "sha256": hashlib.sha256(found.encode()).hexdigest(),
                                        "windows": n, "seq_len": t}


def probe_ids(lm):
    if lm.tokenizer is None:
        return torch.randint(0, lm.spec.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(7)
                             ).to(lm.device)
    return lm.tokenizer(CALIB_TEXT.read_text()[:6000], return_tensors="pt").input_ids[:, :PROBE_TOKENS].to(lm.device)


@torch.inference_mode()
def probe_logits(lm, probe):
    return lm.model(input_ids=probe, use_cache=False).logits.float()


@torch.inference_mode()
def compare(lm, before, probe):
    """Logit drift of the (now compressed) model against `before` on the probe, plus a short greedy
    generation that shows the model still speaks."""
    after = probe_logits(lm, probe)
    diff = (after - before).abs()
    if lm.tokenizer is not None:
        prompt = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids.to(lm.device)
    else:
        prompt = probe[:1, :8]
    out = lm.model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:]
    return {"probe_tokens": int(probe.numel()), "finite_logits": bool(torch.isfinite(after).all()),
            "max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
            "top1_agreement": (after.argmax(-1) == before.argmax(-1)).float().mean().item(),
            "generation": lm.tokenizer.decode(out) if lm.tokenizer is not None else out.tolist()}


def broken(verification, kept, measured, what, synthetic):
    """Why a compressed model must not be measured, or None. `measured` = {fraction kept: the lowest
    top-1 agreement measured there}; below half of it, factors are broken (corrupt, or fitted to other
    weights), not merely lossy. Random weights have no agreement to keep."""
    if not verification["finite_logits"]:
        return "the compressed model's logits on the probe are not finite"
    if synthetic:
        return None
    at = max((r for r in measured if r <= kept + 1e-9), default=min(measured))
    floor = measured[at] / 2
    if verification["top1_agreement"] < floor:
        return (f"top-1 agreement with the uncompressed model is {verification['top1_agreement']:.3f} on "
                f"{verification['probe_tokens']} probe tokens, below {floor:.3f}, half of the lowest measured at "
                f"{at:.0%} kept with {what}: the factors are broken, not merely lossy")
    return None


def conclude(lm, facts, t0, before, probe, name, measured, headline, progress):
    """A method's facts completed with its time, peak memory and verification on the probe; a broken
    compression (calibration.broken against `measured`, at the parameters kept) stops the run."""
    cuda = lm.device.type == "cuda"
    facts.update(compress_s=round(time.perf_counter() - t0, 3),
                 memory={"peak_allocated_bytes": torch.cuda.max_memory_allocated(lm.device) if cuda else None,
                         "peak_reserved_bytes": torch.cuda.max_memory_reserved(lm.device) if cuda else None},
                 verification=compare(lm, before, probe))
    progress(f"{name}: {headline(facts)}; top-1 agreement on the probe {facts['verification']['top1_agreement']:.3f} "
             f"({facts['compress_s']} s)")
    why = broken(facts["verification"], facts["params_kept_ratio"], measured, name, lm.spec.synthetic)
    if why:
        raise CompressionFailed(f"verification: {why}", facts)
    return facts
