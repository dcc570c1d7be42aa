"""What compression methods fit their factors on: calibration windows of text that is never the
perplexity evaluation text (verify.py holds the probe they are checked on), and the on-disk cache of what
a method derives from the model's forward over them."""
import hashlib
import json

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
    if t > config.max_position_embeddings:
        raise UsageError(f"--{method}-calib-seq-len: {t} is longer than the model's context of "
                         f"{config.max_position_embeddings} tokens; allowed: at most {config.max_position_embeddings}")
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


def cached(lm, kind, calib, ids, compute, progress):
    """(tensors, info) of `compute(lm, ids)`, cached in <cache>/<kind>/ by everything they derive from: the
    weights' content (revision or digest), the architecture the config builds from them, the calibration
    windows. A second run on the same model skips the forward; concurrent first runs compute once (cache.py).
    `info` says how it was found; a hit carries no `calibration_s` (nothing was computed)."""
    import torch

    from gcompress_bench import cache, models
    if lm.spec.synthetic:   # random weights differ per seed: nothing worth reusing
        tensors, info = compute(lm, ids)
        return tensors, {**info, "cache_hit": False}
    h = hashlib.sha256(json.dumps([lm.spec.name, models.weights_id(lm.spec), lm.spec.config.to_json_string(), calib,
                                   list(ids.shape)]).encode())
    h.update(ids.numpy().tobytes())
    folder = models.CACHE_ROOT / kind / f"{lm.spec.name.replace('/', '--')}-{h.hexdigest()[:24]}"
    computed = {}

    def build(tmp):
        tensors, computed["info"] = compute(lm, ids)
        kept = {k: v for k, v in computed["info"].items() if k != "calibration_s"}
        torch.save({"tensors": tensors, "info": kept}, tmp / "calibrated.pt")

    how = cache.entry(folder, build)
    saved = torch.load(folder / "calibrated.pt", map_location=lm.device, weights_only=True)   # never unpickles code
    progress(f"{kind} cache: {how} ({folder})")
    return saved["tensors"], {**computed.get("info", saved["info"]), "cache": str(folder), "cache_hit": how == "hit",
                              "cache_status": how}
