"""Perplexity over fixed token windows (the same windows for every variant)."""
import hashlib
import math
import time
from pathlib import Path

import torch

from . import REPO_ROOT, UsageError


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
    spans = windows(len(ids), seq_len, stride)
    for begin, end, first in spans:
        chunk = ids[begin:end][None].to(device)
        logits = model(input_ids=chunk, use_cache=False).logits[0, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")
        nll += losses[first - 1:].double().sum().item()
        count += len(losses) - (first - 1)
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "windows": len(spans),
            "window_starts": [b for b, _, _ in spans]}


FALLBACK_CORPUS = "data/tiny_corpus.txt"
CORPUS_CHOICES = "auto, wikitext2, or a text file"
# WikiText-2 raw under the Hub's current name: datasets >= 5 refuses the old bare name "wikitext"
# ("Repository id must be 'namespace/name'"), although the Hub still redirects it.
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1")


def cached_wikitext2(split):
    """(text, source naming the cached revision) from the local HF datasets cache, or (None, why not);
    never a download."""
    try:
        from datasets import load_dataset
        ds = load_dataset(*WIKITEXT, split=split)
    except Exception as e:  # noqa: BLE001 - any failure offline means "not cached"
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    revision = Path(ds.cache_files[0]["filename"]).parent.name
    return "\n\n".join(ds["text"]), f"{WIKITEXT[0]} {WIKITEXT[1]} {split} (HF datasets cache, revision {revision})"


def read_text_file(flag, path, allowed):
    """A user's text file, or one line naming why it is not one (missing, binary, empty)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag}: {path!r} is not a file; allowed: {allowed}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise UsageError(f"{flag}: {path!r} is not UTF-8 text (a binary file of {len(data)} bytes); allowed: {allowed}")
    if not text.strip():
        raise UsageError(f"{flag}: {path!r} is empty; allowed: {allowed}")
    return text


def load_corpus(choice):
    """(text, source): WikiText-2 raw test from the local HF datasets cache, a user's file, or the
    project's fallback corpus, with the reason a fallback was taken."""
    if choice not in ("auto", "wikitext2"):
        return read_text_file("--ppl-corpus", choice, CORPUS_CHOICES), str(choice)
    text, note = cached_wikitext2("test")
    if text is not None:
        return text, note
    if choice == "wikitext2":
        raise UsageError(f"--ppl-corpus: WikiText-2 is not in the local HF datasets cache ({note}); "
                         "allowed: auto or a text file")
    return (REPO_ROOT / FALLBACK_CORPUS).read_text(), f"{FALLBACK_CORPUS} (FALLBACK: WikiText-2 not in the HF cache)"


def check_corpus(choice, tokenizer, seq_len):
    """At session start: a user's corpus must be text holding at least one window."""
    if choice in ("auto", "wikitext2"):
        return
    text, _ = load_corpus(choice)
    n = len(tokenizer(text).input_ids)
    if n < seq_len:
        raise UsageError(f"--ppl-corpus: {choice!r} has {n} tokens, fewer than one window of --ppl-seq-len {seq_len}; "
                         f"allowed: a text of at least {seq_len} tokens, or a shorter --ppl-seq-len")


def evaluate(lm, corpus, seq_len, stride):
    """The ppl cell: same text, same tokenizer, same windows for every variant."""
    text, source = load_corpus(corpus)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
    t0 = time.perf_counter()
    out = perplexity(lm.model, ids, seq_len, stride)
    return {**out, "dataset": source, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "seq_len": seq_len, "stride": stride, "seconds": time.perf_counter() - t0}
