#!/usr/bin/env python
"""Fill an HF cache with everything a night of gcompress-bench reads; run it where there is network
(a login node), then submit the night on nodes without it.

    HF_HOME=/shared/hf python tools/fill_hf_cache.py --model meta-llama/Meta-Llama-3-8B-Instruct

It makes the client calls a user would make by hand, and prints each one:
  - snapshot_download(model), without the repo's `original/` checkpoint copy;
  - load_dataset("wikitext", "wikitext-2-raw-v1"): perplexity (test) and PaLU calibration (train);
  - load_dataset(path, name) for each --tasks entry, with the path and name the installed lm-eval's
    own task YAML reads (so the cache matches the lm-eval the night will run).
Then check the cache offline before submitting:
    python -m gcompress_bench.llm_eval --suite lmeval --model M --check-only
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gcompress_bench import UsageError, corpus
from gcompress_bench.suites import lmeval

# This tool is the one place that goes online: the flags must be off before the HF libraries import.
os.environ.update(HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")


def fill(models, tasks, wikitext=True):
    from datasets import load_dataset
    from huggingface_hub import constants, snapshot_download

    print(f"fill_hf_cache: HF cache {constants.HF_HOME} (endpoint {constants.ENDPOINT})", flush=True)
    for model in models:
        print(f"snapshot_download({model!r}, ignore_patterns=['original/*'])", flush=True)
        print(f"  -> {snapshot_download(model, ignore_patterns=['original/*'])}", flush=True)
    calls = [corpus.WIKITEXT] if wikitext else []
    calls += [lmeval.builtin_dataset(t) for t in tasks]
    for path, name in calls:
        print(f"load_dataset({path!r}, {name!r})", flush=True)
        ds = load_dataset(path, name)
        print("  -> " + ", ".join(f"{split}: {len(d)} rows" for split, d in ds.items()), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="HF model id (repeatable)")
    p.add_argument("--tasks", default="piqa,hellaswag", help="lm-eval tasks whose datasets to fetch ('' for none)")
    p.add_argument("--no-wikitext", action="store_true", help="skip WikiText-2")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    try:
        local = [t for t in tasks if lmeval.builtin_dataset(t)[0] in (None, "json", "csv", "text")]
    except UsageError as e:
        print(f"fill_hf_cache: {e}", file=sys.stderr)
        return 2
    if local:
        print(f"fill_hf_cache: --tasks: {local} read no HF hub dataset; nothing to fetch for them", file=sys.stderr)
        return 2
    fill(args.model, tasks, not args.no_wikitext)
    return 0


if __name__ == "__main__":
    sys.exit(main())
