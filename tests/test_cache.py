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
    assert json.loads((target / cache.CHECKSUMS).read_text()) == {"part": cache.digest(target / "part")}
    assert sorted(p.name for p in target.parent.iterdir()) == [".entry.lock", "entry"]   # nothing temporary


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
    bad, stored = cache.digest(target / "f"), json.loads((target / cache.CHECKSUMS).read_text())["f"]
    assert cache.entry(target, lambda tmp: (tmp / "f").write_text("good")) == (
        f"rebuilt: {target / 'f'} does not match its stored digest ({bad[:12]}, stored {stored[:12]})")
    assert (target / "f").read_text() == "good" and cache.problem(target) is None
    (target / "f").unlink()
    assert cache.entry(target, lambda tmp: (tmp / "f").write_text("good")) == f"rebuilt: {target / 'f'} is missing"
    assert cache.entry(target, lambda tmp: None) == "hit"


def test_the_digest_is_the_sha256_of_the_blocks_sha256s(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "BLOCK", 1000)
    data = os.urandom(2500)
    (tmp_path / "f").write_bytes(data)
    blocks = [hashlib.sha256(data[i:i + 1000]).digest() for i in (0, 1000, 2000)]
    assert cache.digest(tmp_path / "f") == hashlib.sha256(b"".join(blocks)).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert cache.digest(tmp_path / "empty") == hashlib.sha256(hashlib.sha256(b"").digest()).hexdigest()


PROBLEM = "import sys; from gcompress_bench import cache; print(cache.problem(sys.argv[1]))"


def test_content_overwritten_in_place_with_its_mtime_restored_is_found_by_the_next_process(tmp_path):
    """Metadata can't vouch for content: same size, same mtime, same inode, other bytes."""
    target = tmp_path / "e"
    assert cache.entry(target, lambda tmp: (tmp / "w").write_bytes(os.urandom(3 * 2**20))) == "built"
    check = lambda: subprocess.run([sys.executable, "-c", PROBLEM, str(target)], capture_output=True,  # noqa: E731
                                   text=True, env=ENV).stdout.strip()
    assert check() == "None"
    st = (target / "w").stat()
    with open(target / "w", "r+b") as f:
        f.seek(2**20)
        f.write(os.urandom(2**20))
    os.utime(target / "w", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ((target / "w").stat().st_mtime_ns, (target / "w").stat().st_ino) == (st.st_mtime_ns, st.st_ino)
    assert check().startswith(f"{target / 'w'} does not match its stored digest")


def test_a_sound_entry_is_read_without_writing_anything(tmp_path):
    """A read-only cache, or another user's: a hit takes no lock and writes no file."""
    target = tmp_path / "c" / "e"
    cache.entry(target, lambda tmp: (tmp / "f").write_text("x"))
    (target.parent / ".e.lock").unlink()
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert cache.entry(target, lambda tmp: pytest.fail("rebuilt")) == "hit"
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_a_new_entry_is_readable_as_the_umask_allows(tmp_path):
    def build(tmp):
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "w").write_text("x")
        os.chmod(tmp / "sub" / "w", 0o600)   # as a library's private temp file leaves it
    mask = os.umask(0o022)
    try:
        cache.entry(tmp_path / "e", build)
    finally:
        os.umask(mask)
    modes = {p.relative_to(tmp_path / "e").as_posix(): p.stat().st_mode & 0o777 for p in (tmp_path / "e").rglob("*")}
    assert modes == {"sub": 0o755, "sub/w": 0o644, cache.CHECKSUMS: 0o644}
    assert (tmp_path / "e").stat().st_mode & 0o777 == 0o755


def test_a_killed_builds_folder_is_removed_by_the_next_build_once_its_process_is_gone(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead, live = tmp_path / f".e.tmp-{gone}-0badc0de", tmp_path / f".e.tmp-{os.getpid()}-0badc0de"
    for d in (dead, live):
        d.mkdir()
        (d / "half").write_text("x")
    assert cache.entry(tmp_path / "e", lambda tmp: (tmp / "f").write_text("ok")) == "built"
    assert not dead.exists() and live.exists()   # a live process's build is its own


def test_an_empty_gcompress_cache_means_the_default_location(tmp_path):
    code = "from gcompress_bench import models; print(models.CACHE_ROOT)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**ENV, "GCOMPRESS_CACHE": "", "HOME": str(tmp_path)}).stdout.strip()
    assert got == str(tmp_path / ".cache" / "gcompress_bench")


@pytest.mark.system
def test_palu_runs_at_once_on_an_empty_suite_cache_and_a_corrupt_entry_rebuilt_after(tmp_path, standin_hf_home):
    """A night's palu jobs: the first dequantizes the model and computes the whitening factors (calibrated on
    WikiText-2 train from the HF cache), the other waits for them; both succeed with the same factors and
    nothing temporary is left. Then 4 KB overwritten inside the cached factors (torch.load
    would still read them) are found by the next run, which rebuilds them, says so, and gets the same number."""
    cold = tmp_path / "cache"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REPO / "data" / "tiny_corpus.txt").read_text()[:3000])
    cmd = [sys.executable, "-m", "gcompress_bench.llm_eval", "--variant", "palu", "--suite", "ppl", "--profile", "quick",
           "--ppl-corpus", str(corpus), "--ppl-seq-len", "256", "--palu-calib-samples", "2", "--out", str(tmp_path / "r")]
    env = {**ENV, "GCOMPRESS_CACHE": str(cold), "HF_HOME": str(standin_hf_home)}
    procs = [subprocess.Popen(cmd + ["--run-id", f"p{i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    raw = [json.loads((tmp_path / "r" / "default" / f"p{i}" / "raw.json").read_text()) for i in range(2)]
    calib = [r["method_facts"]["calibration"] for r in raw]
    assert sorted(c["cache_hit"] for c in calib) == [False, True] and len({c["cache"] for c in calib}) == 1
    assert calib[0]["source"].startswith("Salesforce/wikitext wikitext-2-raw-v1 train (HF datasets cache, revision ")
    assert calib[0]["sha256"] == hashlib.sha256(wikitext_text("train").encode()).hexdigest()
    (ppl,) = {r["cells"]["test_ppl[S256]"]["ppl"] for r in raw}
    left = sorted(str(p.relative_to(cold)) for p in cold.rglob("*"))
    assert not [p for p in left if ".tmp" in p], left
    assert "models/smollm2-135m/model.safetensors" in left and sum(p.endswith(".pt") for p in left) == 1
    (entry,) = (cold / "whiten").glob("*/calibrated.pt")
    with open(entry, "r+b") as f:
        f.seek(entry.stat().st_size // 2)
        f.write(os.urandom(4096))
    proc = subprocess.run(cmd + ["--run-id", "after"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = json.loads((tmp_path / "r" / "default" / "after" / "raw.json").read_text())
    status = after["method_facts"]["calibration"]["cache_status"]
    assert status.startswith(f"rebuilt: {entry} does not match its stored digest"), status
    assert after["cells"]["test_ppl[S256]"]["ppl"] == ppl and cache.problem(entry.parent) is None


def test_a_gcompress_cache_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    code = ("from gcompress_bench import UsageError, config, models\n"
            "try:\n    models.resolve('smollm2-135m', config.resolve({})['models'])\n"
            "except UsageError as e:\n    print(e)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**ENV, "GCOMPRESS_CACHE": str(tmp_path / "f")}).stdout.strip()
    assert got == (f"GCOMPRESS_CACHE: '{tmp_path / 'f'}' is not a folder; allowed: a folder (made if missing), or "
                   "unset for ~/.cache/gcompress_bench")


@pytest.mark.system
def test_a_read_only_cache_serves_a_run_and_check_only_to_a_user_who_may_not_write_it(quick_group, tmp_path):
    """A cluster's shared cache as another user sees it: modes read-only, and root without CAP_DAC_OVERRIDE
    (setpriv drops it) obeys them as any user does. The run takes no lock, writes nothing in the cache, and its
    perplexity equals the shared baseline run's, which read a writable cache."""
    import shutil

    from gcompress_bench import models
    from gcompress_bench.results.store import load_raw

    from .conftest import QUALITY, SHORT_CORPUS
    root = tmp_path / "cache"
    shutil.copytree(models.CACHE_ROOT / "models" / "smollm2-135m", root / "models" / "smollm2-135m")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
               "gcompress_bench.llm_eval", "--variant", "baseline", "--suite", "ppl", *QUALITY[:2],
               "--ppl-corpus", str(SHORT_CORPUS)]
    env = {**ENV, "GCOMPRESS_CACHE": str(root)}
    try:
        check = subprocess.run([*as_user, "--check-only"], capture_output=True, text=True, env=env, cwd=REPO)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"gcompress-bench check: model smollm2-135m: {root / 'models/smollm2-135m'}" in check.stdout.splitlines()
        run = subprocess.run([*as_user, "--out", str(tmp_path / "r"), "--run-id", "ro"], capture_output=True,
                             text=True, env=env, cwd=REPO)
        assert run.returncode == 0, run.stdout + run.stderr
        assert sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*")) == before
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    raw, shared = load_raw(tmp_path / "r" / "default" / "ro"), load_raw(quick_group / "g" / "baseline-ppl")
    assert raw["model_facts"]["model_cache"] == "hit"
    (cell, rec), = raw["cells"].items()
    assert rec["status"] == "ok" and rec["ppl"] == shared["cells"][cell]["ppl"]
