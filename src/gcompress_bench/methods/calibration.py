"""What compression methods fit their factors on: calibration windows of text that is never the
perplexity evaluation text (verify.py holds the probe they are checked on)."""
import hashlib

from gcompress_bench import REPO_ROOT, UsageError
from gcompress_bench.corpus import CORPUS_CHOICES, cached_wikitext2, read_text_file
from gcompress_bench.methods.base import Option

CALIB_TEXT = REPO_ROOT / "data" / "calibration.txt"
# the options of every method that calibrates (as --<method>-calib, --<method>-calib-samples, ...)
OPTIONS = (
    Option("calib", "str", "auto", "calibration text: auto (WikiText-2 train if cached, else data/calibration.txt), "
                                   "wikitext2, or a text file"),
    Option("calib_samples", "int", 8, "calibration windows", minimum=1),
    Option("calib_seq_len", "int", 512, "tokens per calibration window", minimum=1),
)


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
    import torch
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
