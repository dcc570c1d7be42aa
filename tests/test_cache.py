"""Shared caches under concurrent first use: real processes started together on an empty cache."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from gcompress_bench import cache

from .conftest import REPO, wikitext_text

BUILDER = """
import os, sys, time
from pathlib import Path
from gcompress_bench import cache
target, log, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():        # every process waits here, then all start at once
    time.sleep(0.005)
def build(tmp):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)           # a slow build: the others arrive while it runs
    (tmp / "part").write_text(str(os.getpid()))
print(cache.entry(target, build))
"""
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_six_processes_on_an_empty_cache_build_the_entry_once(tmp_path):
    target, log, go = tmp_path / "cache" / "entry", tmp_path / "builders.log", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(log), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(6)]
    time.sleep(2)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    assert sorted(o.strip() for o, _ in outs) == ["built"] + ["hit"] * 5
    (builder,) = log.read_text().split()            # one build, by the process that said "built"
    assert (target / "part").read_text() == builder
    assert json.loads((target / cache.CHECKSUMS).read_text()) == {"part": cache.sha256(target / "part")}
    assert sorted(p.name for p in target.parent.iterdir()) == [".entry.lock", ".sha256-memo", "entry"]   # no temporary


def test_a_failed_build_leaves_no_partial_entry(tmp_path):
    def build(tmp):
        (tmp / "half.safetensors").write_bytes(b"x" * 4096)
        raise OSError("No space left on device")
    with pytest.raises(OSError, match="No space left"):
        cache.entry(tmp_path / "m", build)
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]
    assert cache.entry(tmp_path / "m", lambda tmp: (tmp / "f").write_text("ok")) == "built"   # the next run builds it


def test_a_damaged_entry_is_rebuilt_and_says_what_was_wrong(tmp_path):
    target = tmp_path / "e"
    assert cache.entry(target, lambda tmp: (tmp / "f").write_text("good")) == "built"
    (target / "f").write_text("bad!")
    bad, stored = cache.sha256(target / "f"), json.loads((target / cache.CHECKSUMS).read_text())["f"]
    assert cache.entry(target, lambda tmp: (tmp / "f").write_text("good")) == (
        f"rebuilt: {target / 'f'} does not match its stored sha256 ({bad[:12]}, stored {stored[:12]})")
    assert (target / "f").read_text() == "good" and cache.problem(target) is None
    (target / "f").unlink()
    assert cache.entry(target, lambda tmp: (tmp / "f").write_text("good")) == f"rebuilt: {target / 'f'} is missing"
    assert cache.entry(target, lambda tmp: None) == "hit"


@pytest.mark.system
def test_three_palu_runs_at_once_on_an_empty_suite_cache(tmp_path, standin_hf_home):
    """The night's three palu jobs: the first dequantizes the model and computes the whitening factors
    (calibrated on WikiText-2 train from the HF cache), the others wait for them; all succeed with the
    same factors and nothing temporary is left."""
    cold = tmp_path / "cache"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REPO / "data" / "tiny_corpus.txt").read_text()[:3000])
    cmd = [sys.executable, "-m", "gcompress_bench.llm_eval", "--variant", "palu", "--suite", "ppl", "--profile", "quick",
           "--ppl-corpus", str(corpus), "--ppl-seq-len", "256", "--palu-calib-samples", "2", "--out", str(tmp_path / "r")]
    env = {**ENV, "GCOMPRESS_CACHE": str(cold), "HF_HOME": str(standin_hf_home)}
    procs = [subprocess.Popen(cmd + ["--run-id", f"p{i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    runs = [tmp_path / "r" / "default" / f"p{i}" for i in range(3)]
    calib = [json.loads((r / "raw.json").read_text())["method_facts"]["calibration"] for r in runs]
    assert sorted(c["cache_hit"] for c in calib) == [False, True, True] and len({c["cache"] for c in calib}) == 1
    assert calib[0]["source"].startswith("Salesforce/wikitext wikitext-2-raw-v1 train (HF datasets cache, revision ")
    assert calib[0]["sha256"] == hashlib.sha256(wikitext_text("train").encode()).hexdigest()
    ppl = {json.loads((r / "raw.json").read_text())["cells"]["test_ppl[S256]"]["ppl"] for r in runs}
    assert len(ppl) == 1
    left = sorted(str(p.relative_to(cold)) for p in cold.rglob("*"))
    assert not [p for p in left if ".tmp" in p], left
    assert "models/smollm2-135m/model.safetensors" in left and sum(p.endswith(".pt") for p in left) == 1
