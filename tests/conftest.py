import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A tiny grid: enough cells to exercise ordering, OOM and interruption, small enough for 2 CPU cores.
TINY = ["--model=smollm2-135m", "--profile=quick", "--prefill-batch=1,2", "--prefill-seq-len=16",
        "--decode-ctx=16", "--decode-gen=4", "--decode-batch=1", "--warmup=1", "--iters=3", "--trials=2"]


def run_cli(module, *args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def llm_run(tmp_path):
    """Run the llm_run CLI with a results root under tmp_path; returns (proc, run dirs)."""
    root = tmp_path / "results"

    def go(*args, **kw):
        proc = run_cli("gcompress_bench.llm_run", "--out", str(root), *args, **kw)
        runs = sorted(p for p in root.glob("*/*") if p.is_dir()) if root.exists() else []
        return proc, runs
    go.root = root
    return go


@pytest.fixture(scope="session")
def standin_hf_home(tmp_path_factory):
    """An HF cache filled the way a login node fills one: the real clients (snapshot_download,
    load_dataset) against the Hub stand-in, which `populate` starts and stops."""
    home = tmp_path_factory.mktemp("hf_home")
    log = home.parent / "standin-requests.log"   # the server's request log, beside the cache
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "hub_standin.py"), "populate", "--hf-home", str(home),
                           "--log", str(log)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return home


def wikitext_text(split):
    """WikiText-2 raw as the stand-in serves it (one row per line, blank lines empty), joined as the suite
    joins the rows: rebuilt from the source file here, not read through datasets."""
    lines = (REPO / "data" / "hub_standin" / "wikitext" / f"{split}.txt").read_text().splitlines()
    return "\n\n".join(line + "\n" if line else "" for line in lines)
