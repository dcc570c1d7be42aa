"""The harness's verification (base.Method.apply): a fixed probe on which the compressed model's logits
are compared with the original's, and the rule that calls a compression broken."""
import torch

from gcompress_bench.methods.calibration import CALIB_TEXT

PROBE_TOKENS = 256   # enough positions that top-1 agreement moves in steps of 0.4%, not 1.6%


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
    weights), not merely lossy. Random weights have no agreement to keep, and a method without a measured
    table (measured None) is held to finite logits alone."""
    if not verification["finite_logits"]:
        return "the compressed model's logits on the probe are not finite"
    if synthetic or not measured:
        return None
    at = max((r for r in measured if r <= kept + 1e-9), default=min(measured))
    floor = measured[at] / 2
    if verification["top1_agreement"] < floor:
        return (f"top-1 agreement with the uncompressed model is {verification['top1_agreement']:.3f} on "
                f"{verification['probe_tokens']} probe tokens, below {floor:.3f}, half of the lowest measured at "
                f"{at:.0%} kept with {what}: the factors are broken, not merely lossy")
    return None
