import fcntl
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per CLI run it starts): workers share the cores without OpenMP threads spinning
    # against each other, which slows a CPU forward several times over. Set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
SHORT_CORPUS = REPO / "tests" / "data" / "short_corpus.txt"   # 4 windows of 256 tokens: ppl cells in seconds
# A tiny grid: enough cells to exercise ordering, OOM and interruption, small enough for 2 CPU cores.
TINY = ["--model=smollm2-135m", "--profile=quick", "--prefill-batch=1,2", "--prefill-seq-len=16",
        "--decode-ctx=16", "--decode-gen=4", "--decode-batch=1", "--warmup=1", "--iters=3", "--trials=2"]


# Fixtures whose tests must share one pytest-xdist worker: the shared runs are made once, one local Slurm
# serves its module, the RULER cell (a minute of lm-eval) is evaluated once, and so are the fused kernel's cases
# in Triton's interpreter.
SHARED = ("quick_group", "slurm", "niah", "interpreted")


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        for name in SHARED:
            if name in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(name))
                break
    # the Slurm tests first, `late` tests last: a night started early is reported on after Slurm has forgotten it
    items.sort(key=lambda i: 2 if i.get_closest_marker("late") else 0 if "slurm" in i.fixturenames else 1)


SLURM_DIR = Path(os.environ.get("GCB_SLURM_DIR", "/tmp/gcb-slurm"))


@pytest.fixture(scope="session")
def local_slurm():
    """A real single-node Slurm (tests/local_slurm.sh), started once and stopped when the whole test run ends (by
    pytest_sessionfinish below, in the process that ran no test under xdist): a `late` test's report job may run
    long after the tests that started its night, on another worker."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("starting a local Slurm needs root and apt-get")
    subprocess.run(["bash", str(REPO / "tests/local_slurm.sh"), "start"], check=True, timeout=600)
    (SLURM_DIR / "used-by-tests").touch()


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput") and (SLURM_DIR / "used-by-tests").exists():
        subprocess.run(["bash", str(REPO / "tests/local_slurm.sh"), "stop"], timeout=60)
        (SLURM_DIR / "used-by-tests").unlink()


def run_cli(module, *args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


# The shared runs' quality options: one ppl window size, one lm-eval task at 0 shots on 6 items.
QUALITY = ["--ppl-seq-len", "256", "--tasks", "piqa", "--fewshot", "0", "--limit", "6"]
QUICK_VARIANTS = {"baseline": ["--variant", "baseline"], "palu": ["--variant", "palu"],
                  "asvd": ["--variant", "asvd"], "palu-latent": ["--variant", "palu", "--palu-cache", "latent"]}


@pytest.fixture(scope="session")
def quick_group(tmp_path_factory):
    """One set of real CLI runs in the exp group "g" that the report, quality and end-to-end tests all assert
    on, instead of each making its own: each variant's infer_sweep on the TINY grid with 2 profiled
    iterations (the palu-latent run's B2 prefill cell runs out of memory), and baseline, palu and asvd through
    ppl and lmeval, the candidates paired against the baseline's run. The timing runs go one after another
    (runs timed at once would be flagged as sharing the host), beside the quality runs. Returns the results
    root; each run's stdout is in <root>/logs/<run id>.out. Tests using it join the xdist group "quick_group"."""
    root = tmp_path_factory.mktemp("quick")
    timing = [(f"{name}-infer", "gcompress_bench.llm_run", [*args, *TINY, "--ops-profile", "2"] +
               (["--", "-p", "tests.plugins.oom_cell"] if name == "palu-latent" else []))
              for name, args in QUICK_VARIANTS.items()]
    quality = [(f"{name}-{suite}", "gcompress_bench.llm_eval",
                [*QUICK_VARIANTS[name], "--suite", suite, *QUALITY, "--ppl-corpus", str(SHORT_CORPUS)] +
                (["--baseline-run", str(root / "g" / f"baseline-{suite}")] if name != "baseline" else []))
               for name in ("baseline", "palu", "asvd") for suite in ("ppl", "lmeval")]   # baseline's first
    (root / "logs").mkdir()

    def run_all(jobs):
        for run_id, cli, args in jobs:
            cut = args.index("--") if "--" in args else len(args)
            proc = run_cli(cli, *args[:cut], "--out", str(root), "--exp-group", "g", "--run-id", run_id, *args[cut:])
            (root / "logs" / f"{run_id}.out").write_text(proc.stdout)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(run_all, timing), pool.submit(run_all, quality)]:
            done.result()
    return root


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
    load_dataset) against the Hub stand-in, which `populate` starts and stops. Filled once per test run:
    the first xdist worker to get here fills it, the others wait for it and read it."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
    home = shared / "hf_home"
    log = shared / "standin-requests.log"   # the server's request log, beside the cache
    with open(shared / "hf_home.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "hf_home.filled").exists():
            proc = subprocess.run([sys.executable, str(REPO / "tools" / "hub_standin.py"), "populate", "--hf-home",
                                   str(home), "--log", str(log)], capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
            (shared / "hf_home.filled").touch()
    return home


def smollm2(dtype="float32", layers=None):
    """The embedded SmolLM2-135M on CPU. `layers` keeps only its first N decoder layers, with their pretrained
    weights and the real tokenizer: the structural tests' small model, where a compile or a compression costs
    about N/30 of the whole model's."""
    import torch

    from gcompress_bench import models
    from gcompress_bench.config import resolve
    lm = models.load(models.resolve("smollm2-135m", resolve({})["models"]), dtype, torch.device("cpu"))
    if layers:
        lm.model.model.layers = lm.model.model.layers[:layers]
        for cfg in {id(c): c for c in (lm.spec.config, lm.model.config)}.values():
            cfg.num_hidden_layers = layers
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:layers]
    return lm


def wikitext_text(split):
    """WikiText-2 raw as the stand-in serves it (one row per line, blank lines empty), joined as the suite
    joins the rows: rebuilt from the source file here, not read through datasets."""
    lines = (REPO / "data" / "hub_standin" / "wikitext" / f"{split}.txt").read_text().splitlines()
    return "\n\n".join(line + "\n" if line else "" for line in lines)


def ppl_ratio_cell(ref, cand):
    """A comparison table's perplexity-ratio cell for two raw ppl records: the ratio, its interval (results.stats,
    tested against scipy's bootstrap) and the windows' verdict."""
    from gcompress_bench.results.stats import ppl_ratio_interval
    lo, hi = ppl_ratio_interval(ref["window_nll"], cand["window_nll"], ref["window_tokens"])
    return (f"{cand['ppl'] / ref['ppl']:.4f} [{lo:.4f}, {hi:.4f}]" + (" no measurable difference" if lo <= 1 <= hi
                                                                      else "") + " (same windows)")
