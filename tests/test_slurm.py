"""The Slurm side against a real single-node Slurm started on this machine (tools/local_slurm.sh)."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
LAUNCH = REPO / "slurm" / "launch_llm_night.sh"
GRID = ("--prefill-batch=1,2 --prefill-seq-len=16 --decode-ctx=16 --decode-gen=4 --decode-batch=1 --warmup=1 "
        "--iters=3 --trials=1 --ppl-seq-len=256 --fewshot=0")
SMALL = ["--no-gpu", "--model", "smollm2-135m", "--profile", "quick", "--tasks", "piqa", "--limit", "4",
         "--job-args", GRID]
JOB_RES = ["--", "--mem=3G", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("starting a local Slurm needs root and apt-get")
    subprocess.run(["bash", str(REPO / "tools/local_slurm.sh"), "start"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(REPO / "tools/local_slurm.sh"), "stop"], timeout=60)


def launch(tmp_path, *args):
    proc = subprocess.run(["bash", str(LAUNCH), "--results-root", str(tmp_path / "results"),
                           "--reports-root", str(tmp_path / "reports"), *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, [int(i) for i in re.findall(r"job (\d+)", proc.stdout)]


def wait(ids, limit=900):
    """Poll squeue until the jobs have left the queue (bounded)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(map(str, ids))], capture_output=True,
                             text=True).stdout.split()
        if not out:
            return
        time.sleep(1)
    pytest.fail(f"jobs {ids} still queued after {limit} s")


def test_night_runs_six_jobs_and_a_report_naming_the_failed_ones(slurm, tmp_path):
    out, ids = launch(tmp_path, *SMALL, "--exp-group", "night", "--variants", "baseline,palu,bogus", *JOB_RES)
    assert len(ids) == 10   # 9 jobs (3 with the bad variant 'bogus') + the report
    wait(ids)
    runs = sorted(p.name.split("-", 2)[2] for p in (tmp_path / "results" / "night").iterdir())
    assert runs == sorted(f"{v}-{s}" for v in ("baseline", "palu") for s in ("infer_sweep", "ppl", "lmeval"))
    for run in (tmp_path / "results" / "night").iterdir():
        for name in ("config.json", "env.json", "raw.json", "summary.json", "run_summary.md"):
            assert (run / name).exists(), (run, name)
        env = json.loads((run / "env.json").read_text())
        assert env["slurm"]["SLURM_JOB_ID"] and env["hf_offline"]["HF_HUB_OFFLINE"] == "1"
        assert all(c["status"] == "ok" for c in json.loads((run / "raw.json").read_text())["cells"].values())
    logs = REPO / "slurm_logs"
    err = (logs / f"bogus-ppl_{ids[7]}.err").read_text()
    assert "run_llm.sbatch: --variant: unknown value 'bogus'; allowed: baseline, palu" in err
    assert (logs / f"baseline-ppl_{ids[1]}.out").exists()
    md = (tmp_path / "reports" / "night" / "report.md").read_text()
    for name, jid in zip(["bogus-infer_sweep", "bogus-ppl", "bogus-lmeval"], ids[6:9]):
        assert f"| {name} | {jid} | **FAILED** (FAILED) | 2:0 |" in md
    assert f"| baseline-ppl | {ids[1]} | COMPLETED | 0:0 |" in md
    assert re.search(r"\| test_ppl\[S256\] \| \d+\.\d{4} \| \d+\.\d{4} \| \d+\.\d{4} \| True \|", md)
    assert re.search(r"\| test_prefill\[B1-S16\] \| \d+\.\d{3} \|", md)


def test_sharded_infer_sweep_merges_to_the_unsharded_cell_set(slurm, tmp_path):
    out, ids = launch(tmp_path, *SMALL, "--exp-group", "sharded", "--suites", "infer_sweep", "--shards", "2", *JOB_RES)
    wait(ids)
    runs = sorted(p.name for p in (tmp_path / "results" / "sharded").iterdir())
    assert [r.rsplit("-", 1)[1] for r in runs] == ["shard0", "shard1", "shard0", "shard1"]
    cells = {}
    for run in runs:
        raw = json.loads((tmp_path / "results" / "sharded" / run / "raw.json").read_text())
        cells.setdefault(raw["variant"], []).extend(raw["cells"])
    unsharded = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pytest", "benchmarks", "-m", "prefill or decode",
                                "--co", "-q", *GRID.split()], capture_output=True, text=True, cwd=REPO).stdout
    expected = sorted(line.split("::")[1] for line in unsharded.splitlines() if "::" in line)
    for variant in ("baseline", "palu"):
        assert sorted(cells[variant]) == expected and len(set(cells[variant])) == len(expected)
    report = json.loads((tmp_path / "reports" / "sharded" / "report.json").read_text())
    assert sorted(r["cell"] for r in report["prefill"] + report["decode"]) == expected
    assert all(r["speedup"] for r in report["prefill"] + report["decode"])


def test_launcher_bad_input(tmp_path):
    proc = subprocess.run(["bash", str(LAUNCH), "--shards", "0", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "launch_llm_night: --shards: '0' is not allowed; allowed: a positive integer" in proc.stderr
    env = {**os.environ, "PATH": "/usr/bin/nonexistent:/bin"}
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "date", "dirname", "mkdir", "cut", "cat"):
        if shutil.which(tool):
            (bare / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run([str(bare / "bash"), str(LAUNCH)], capture_output=True, text=True,
                          env={**env, "PATH": str(bare)})
    assert proc.returncode == 2 and "sbatch is not on PATH" in proc.stderr
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--exp-group", "g", "--no-gpu"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and sum(line.startswith("sbatch ") for line in proc.stderr.splitlines()) == 7
    assert "--gres=none" in proc.stderr
    assert "--dependency afterany:DRYRUN:DRYRUN:DRYRUN:DRYRUN:DRYRUN:DRYRUN" in proc.stderr


def test_job_script_rejects_bad_input_before_loading_anything(tmp_path):
    script = REPO / "slurm" / "run_llm.sbatch"
    for args, message in [(["--variant", "x", "--suite", "ppl"], "--variant: unknown value 'x'; allowed: baseline, palu"),
                          (["--variant", "palu", "--suite", "bleu"], "--suite: unknown value 'bleu'; allowed: infer_sweep, ppl, lmeval"),
                          (["--variant", "palu", "--suite", "ppl", "--shards", "-1"], "--shards: '-1' is not allowed")]:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr
    proc = subprocess.run(["bash", str(script), "--variant", "palu", "--suite", "ppl"], capture_output=True, text=True,
                          env={**os.environ, "GC_REPO": str(REPO), "GC_VENV": str(tmp_path / "novenv"),
                               "GC_CONDA_ENV": "no-such-env"})
    assert proc.returncode == 2
    assert f"no Python environment: conda env 'no-such-env' not found and no venv at {tmp_path / 'novenv'}" in proc.stderr
