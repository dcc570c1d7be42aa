"""The Slurm side against a real single-node Slurm started on this machine (tools/local_slurm.sh)."""
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
LAUNCH = REPO / "slurm" / "launch_llm_night.sh"
GRID = ("--prefill-batch=1,2 --prefill-seq-len=16 --decode-ctx=16 --decode-gen=4 --decode-batch=1 --warmup=1 "
        "--iters=3 --trials=1 --ppl-seq-len=256 --fewshot=0")
SMALL = ["--no-gpu", "--model", "smollm2-135m", "--profile", "quick", "--tasks", "piqa", "--limit", "4",
         "--job-args", GRID]
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
NIGHT = ["--no-gpu", "--model", HF_ID, "--profile", "quick", "--tasks", "piqa,hellaswag", "--limit", "8",
         "--job-args", GRID]
JOB_RES = ["--", "--mem=1500M", "--cpus-per-task=1"]   # the local partition oversubscribes its 2 cores


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("starting a local Slurm needs root and apt-get")
    subprocess.run(["bash", str(REPO / "tools/local_slurm.sh"), "start"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(REPO / "tools/local_slurm.sh"), "stop"], timeout=60)


def launch(tmp_path, *args, env=None):
    proc = subprocess.run(["bash", str(LAUNCH), "--results-root", str(tmp_path / "results"),
                           "--reports-root", str(tmp_path / "reports"), *args], capture_output=True, text=True,
                          timeout=60, env=env)
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


def _job_times(jid):
    line = subprocess.run(["scontrol", "show", "job", "-o", str(jid)], capture_output=True, text=True).stdout
    return [datetime.fromisoformat(re.search(rf"{k}=(\S+)", line)[1]) for k in ("StartTime", "EndTime")]


def test_the_night_on_an_hf_cache_six_jobs_at_once(slurm, tmp_path, standin_hf_home):
    """The user's first night: an HF id and the datasets from an HF cache filled on a login node, an empty
    suite cache, all six jobs starting together (the three palu jobs race for the whitening factors)."""
    cold = tmp_path / "cold-cache"
    env = {**os.environ, "GC_HF_HOME": str(standin_hf_home), "GCOMPRESS_CACHE": str(cold)}
    start = time.monotonic()
    out, ids = launch(tmp_path, *NIGHT, "--exp-group", "night", *JOB_RES, env=env)
    assert len(ids) == 7   # 6 jobs + the report
    wait(ids)
    wall = time.monotonic() - start
    night = tmp_path / "results" / "night"
    runs = sorted(p.name.split("-", 2)[2] for p in night.iterdir())
    assert runs == sorted(f"{v}-{s}" for v in ("baseline", "palu") for s in ("infer_sweep", "ppl", "lmeval"))
    spans = [_job_times(j) for j in ids[:6]]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans   # all six were running at one moment
    hits = []
    for run in night.iterdir():
        for name in ("config.json", "env.json", "raw.json", "summary.json", "run_summary.md"):
            assert (run / name).exists(), (run, name)
        env_json = json.loads((run / "env.json").read_text())
        assert env_json["slurm"]["SLURM_JOB_ID"] and env_json["hf_offline"]["HF_HUB_OFFLINE"] == "1"
        assert env_json["hf_offline"]["HF_HOME"] == str(standin_hf_home)
        assert all(c["status"] == "ok" for c in json.loads((run / "raw.json").read_text())["cells"].values())
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["model_facts"]["revision"] and cfg["model_facts"]["path"].startswith(str(standin_hf_home))
        if cfg["variant"] == "palu":
            hits.append(cfg["palu_facts"]["calibration"]["cache_hit"])
    assert sorted(hits) == [False, True, True]   # computed once under the lock, read by the other two
    left = sorted(p.name for p in cold.rglob("*"))
    assert len([n for n in left if n.endswith(".pt")]) == 1 and not [n for n in left if ".tmp" in n], left
    assert (REPO / "slurm_logs" / f"baseline-ppl_{ids[1]}.out").exists()
    md = (tmp_path / "reports" / "night" / "report.md").read_text()
    assert f"| baseline-ppl | {ids[1]} | COMPLETED | 0:0 |" in md
    assert "FALLBACK" not in md and "baber/piqa (HF datasets cache" in md and "Rowan/hellaswag (HF datasets" in md
    assert re.search(r"\| test_ppl\[S256\] \| \d+\.\d{4} \| \d+\.\d{4} \| \d+\.\d{4} \| True \| "
                     r"Salesforce/wikitext wikitext-2-raw-v1 test \(HF datasets cache", md)
    assert re.search(r"\| test_prefill\[B1-S16\] \| \d+\.\d{3} \|", md)
    print(f"night wall time: {wall:.0f} s")


def test_the_report_job_names_every_failed_job(slurm, tmp_path):
    ok = subprocess.run(["sbatch", "--parsable", "--mem=100M", "--output", "/dev/null", "--wrap", "true"],
                        capture_output=True, text=True).stdout.strip()
    bad = subprocess.run(["sbatch", "--parsable", "--mem=100M", "--output", "/dev/null", "--wrap", "exit 3"],
                         capture_output=True, text=True).stdout.strip()
    wait([ok, bad])
    proc = subprocess.run(["bash", str(REPO / "slurm/night_report.sh"), str(tmp_path / "results"), "g",
                           str(tmp_path / "rep"), f"palu-ppl={bad}", f"baseline-ppl={ok}"], capture_output=True,
                          text=True, env={**os.environ, "GC_REPO": str(REPO)})
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| palu-ppl | {bad} | **FAILED** (FAILED) | 3:0 | slurm_logs/palu-ppl_{bad}.err |" in md
    assert f"| baseline-ppl | {ok} | COMPLETED | 0:0 |" in md
    assert "No comparison: need at least one baseline and one palu run" in md and proc.returncode == 2


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


@pytest.mark.parametrize("args, line", [
    (["--shards", "0"], "--shards: '0' is not allowed; allowed: a positive integer"),
    (["--variants", "baseline,nope"], "--variants: unknown variant 'nope'; allowed: baseline, palu"),
    (["--suites", "ppl,bleu"], "--suites: unknown suite 'bleu'; allowed: infer_sweep, ppl, lmeval"),
    (["--profile"], "--profile needs a value; see the header of"),
    (["--exp-group", "--dry-run"], "--exp-group needs a value"),
    (["--profile", "huge"], "the palu jobs would stop at once: gcompress-bench: --profile: unknown profile 'huge'; "
                            "allowed: full, long, quick"),
    (["--model", "nope/none"], "the palu jobs would stop at once: gcompress-bench: model 'nope/none' is not in the "
                               "local HF cache"),
    (["--variants", "baseline", "--suites", "ppl", "--model", "llama3-8b-shape"],
     "the baseline jobs would stop at once: gcompress-bench: --model: 'llama3-8b-shape' has synthetic weights"),
    (["--job-args", "--palu-group-size 2"], "gcompress-bench: --palu-group-size: 2 does not divide smollm2-135m's"),
])
def test_launcher_refuses_bad_input_before_submitting_or_creating_anything(tmp_path, args, line):
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--results-root", str(tmp_path / "r"), "--reports-root",
                           str(tmp_path / "rep"), "--profile", "quick", *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (err,) = proc.stderr.splitlines()
    assert err.startswith("launch_llm_night: ") and line in err
    assert list(tmp_path.iterdir()) == []


def test_launcher_bad_input(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin/nonexistent:/bin"}
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "date", "dirname", "mkdir", "cut", "cat"):
        if shutil.which(tool):
            (bare / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run([str(bare / "bash"), str(LAUNCH)], capture_output=True, text=True,
                          env={**env, "PATH": str(bare)})
    assert proc.returncode == 2 and "sbatch is not on PATH" in proc.stderr
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--exp-group", "g", "--no-gpu", "--results-root",
                           str(tmp_path / "r"), "--reports-root", str(tmp_path / "rep")], capture_output=True, text=True)
    assert proc.returncode == 0 and sum(line.startswith("sbatch ") for line in proc.stderr.splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]   # a dry run creates no folder
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
