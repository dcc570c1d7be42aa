"""Text sources: WikiText-2 from the local HF datasets cache, a user's text file, or the project's
fallback corpus (a leaf: perplexity, calibration and long-context prompts all read text here)."""
from pathlib import Path

from gcompress_bench import REPO_ROOT, UsageError

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
    """A user's text file, or one line naming why it is not one (missing, unreadable, binary, empty)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag}: {path!r} is not a file; allowed: {allowed}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{flag}: {path!r} can't be read ({e.strerror}); allowed: {allowed}") from None
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
    """At session start: a user's corpus must be text holding at least one window; WikiText-2, when asked for by
    name, must be in the HF cache (auto falls back, and says so)."""
    if choice in ("auto", "wikitext2"):
        if choice == "wikitext2":
            load_corpus(choice)
        return
    text, _ = load_corpus(choice)
    n = len(tokenizer(text).input_ids)
    if n < seq_len:
        raise UsageError(f"--ppl-corpus: {choice!r} has {n} tokens, fewer than one window of --ppl-seq-len {seq_len}; "
                         f"allowed: a text of at least {seq_len} tokens, or a shorter --ppl-seq-len")
