"""Perplexity over fixed token windows (the same windows for every variant)."""
import math

import torch


def windows(n_tokens, seq_len, stride=None):
    """(begin, end, first scored position) per window; a stride < seq_len gives sliding windows whose
    overlap is context only, so every token is scored exactly once."""
    stride = stride or seq_len
    out, scored_to = [], 0
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + seq_len, n_tokens)
        if end - begin < 2:
            break
        out.append((begin, end, max(scored_to, begin + 1) - begin))
        scored_to = end
        if end == n_tokens:
            break
    return out


@torch.inference_mode()
def perplexity(model, ids, seq_len, stride=None):
    """exp(mean NLL) of ids[1:] given their prefixes within each window."""
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for begin, end, first in windows(len(ids), seq_len, stride):
        chunk = ids[begin:end][None].to(device)
        logits = model(input_ids=chunk, use_cache=False).logits[0, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")
        nll += losses[first - 1:].double().sum().item()
        count += len(losses) - (first - 1)
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count,
            "windows": len(windows(len(ids), seq_len, stride))}
