"""The Slurm side against a real single-node Slurm started on this machine (tests/local_slurm.sh), and the
launcher's and job script's command lines without one (--dry-run, a stand-in Python)."""
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from itertools import product
from pathlib import Path

import pytest

from .conftest import REPO, SHORT_CORPUS, ppl_ratio_cell

pytestmark = pytest.mark.system
LAUNCH = REPO / "slurm" / "launch_llm_night.sh"
JOB = REPO / "slurm" / "run_llm.sbatch"
SUITES = ("infer_sweep", "ppl", "lmeval")
PLUGIN = {"GCOMPRESS_METHODS": "tests.plugins.toy_method"}   # registers the method "mlpprune" (--mlpprune-keep)
GRID = ("--prefill-batch=1,2 --prefill-seq-len=16 --decode-ctx=16 --decode-gen=4 --decode-batch=1 --warmup=1 "
        "--iters=3 --trials=1 --ppl-seq-len=256 --fewshot=0")
CALIB = " --palu-calib-samples=2"   # the palu jobs' whitening: 2 windows are plumbing enough
SMALL = ["--no-gpu", "--allow-fallback", "--model", "smollm2-135m", "--profile", "quick", "--tasks", "piqa",
         "--limit", "4",
         "--job-args", GRID + CALIB + f" --ppl-corpus={SHORT_CORPUS}"]
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# the timing jobs measure 6 cells of about 5 s each on one idle core, and the night's six jobs share two: the palu
# one, cut to its time limit after its first cell, has more than Slurm's 30 s time-limit check left at the SIGTERM
NIGHT_GRID = ("--prefill-batch=1 --prefill-seq-len=16 --decode-ctx=16 --decode-gen=4 --decode-batch=1,2,3,4,5 "
              "--warmup=1 --iters=8 --trials=1 --ppl-seq-len=256 --fewshot=0")
NIGHT = ["--no-gpu", "--model", HF_ID, "--profile", "quick", "--tasks", "piqa,hellaswag", "--limit", "4",
         "--job-args", NIGHT_GRID + CALIB]
JOB_RES = ["--", "--mem=1500M", "--cpus-per-task=1"]   # the local partition oversubscribes its 2 cores


@pytest.fixture(scope="module")
def slurm(local_slurm):
    """The local Slurm: the tests using it share one xdist worker, and run first (tests/conftest.py)."""


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


def remembered(jid):
    """Whether the controller still knows a job (it forgets a finished one after MinJobAge)."""
    return subprocess.run(["scontrol", "show", "job", str(jid)], capture_output=True, text=True).returncode == 0


def _utc(stamp):
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


NIGHT_JOBS = [f"{v}-{s}" for v in ("baseline", "palu") for s in SUITES]


def _hf_night(base, hf_home):
    """Launch the quality-and-timing night on the HF cache, hold its report job, cut palu-infer_sweep's time limit
    once it has measured its first cell (Slurm then sends its SIGTERM, 120 s before the limit, within its 30 s check),
    and wait for the six jobs: the facts the two tests below assert on."""
    env = {**os.environ, "GC_HF_HOME": str(hf_home), "GCOMPRESS_CACHE": str(base / "cold-cache")}
    start = time.monotonic()
    out, ids = launch(base, *NIGHT, "--exp-group", "night", *JOB_RES, env=env)
    assert len(ids) == 7, out   # 6 jobs + the report
    jobs, report = dict(zip(NIGHT_JOBS, ids)), ids[-1]
    subprocess.run(["scontrol", "hold", str(report)], check=True)   # started later, by the late test
    def measured():
        log = next(iter((base / "results" / "night").glob("*-palu-infer_sweep/cells.jsonl")), None)
        return len(log.read_text().splitlines()) if log else 0
    end = time.monotonic() + 600
    while measured() < 1:
        assert time.monotonic() < end, "palu-infer_sweep measured no cell in 600 s"
        time.sleep(0.5)
    ran = subprocess.run(["squeue", "-h", "-j", str(jobs["palu-infer_sweep"]), "-o", "%M"], capture_output=True,
                         text=True).stdout.strip()
    minutes = sum(int(x) * 60 ** i for i, x in enumerate(reversed(ran.split(":")))) // 60 + 1
    subprocess.run(["scontrol", "update", f"jobid={jobs['palu-infer_sweep']}", f"timelimit={minutes}"], check=True)
    wait(ids[:-1])
    return {"base": str(base), "jobs": jobs, "report": report, "wall_s": time.monotonic() - start,
            "limit_min": minutes}


@pytest.fixture(scope="session")
def hf_night(local_slurm, tmp_path_factory, standin_hf_home):
    """The night, once per test run: the first xdist worker to get here runs it, the other reads its facts."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(base / "hf-night.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "hf-night.json").exists():
            (base / "hf-night").mkdir()
            (base / "hf-night.json").write_text(json.dumps(_hf_night(base / "hf-night", standin_hf_home)))
    return json.loads((base / "hf-night.json").read_text())


def test_the_night_on_an_hf_cache_six_jobs_at_once_one_stopped_by_its_time_limit(slurm, hf_night, standin_hf_home):
    """The user's first night: an HF id and the datasets from an HF cache filled on a login node, an empty suite
    cache, all six jobs starting together (the three palu jobs race for the whitening factors), and the palu
    timing job stopped by Slurm's time limit mid-grid. Each job's own status file says how it ended; its report
    job runs later (the late test below)."""
    base, jobs = Path(hf_night["base"]), hf_night["jobs"]
    night = base / "results" / "night"
    runs = {p.name.split("-", 2)[2]: p for p in night.iterdir() if p.is_dir()}
    assert sorted(runs) == sorted(NIGHT_JOBS)
    status = {name: json.loads((night / f"job-{jid}.json").read_text()) for name, jid in jobs.items()}
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    for name, st in status.items():
        assert (st["job_id"], st["name"], st["node"], st["run_dir"]) == (str(jobs[name]), name, host, str(runs[name]))
        assert _utc(st["start_utc"]) <= _utc(st["end_utc"])
    assert {n: (st["state"], st["exit_code"]) for n, st in status.items()} == {
        **{n: ("COMPLETED", 0) for n in NIGHT_JOBS}, "palu-infer_sweep": ("TIMEOUT", 143)}
    assert 0 <= status["palu-infer_sweep"]["signal_time_left_s"] <= 60 * hf_night["limit_min"]
    starts, ends = ([_utc(st[k]) for st in status.values()] for k in ("start_utc", "end_utc"))
    assert max(starts) < min(ends), status   # all six were running at one moment
    # the time-limited run: its cells so far, its summary with the banner, and its stop in its Slurm log
    raw = json.loads((runs["palu-infer_sweep"] / "raw.json").read_text())
    stop, cfg = raw["interrupted"], json.loads((runs["palu-infer_sweep"] / "config.json").read_text())
    assert stop["signal"] == "SIGTERM" and 1 <= stop["cells_done"] == len(raw["cells"]) < stop["cells"] == 6
    assert all(c["status"] == "ok" for c in raw["cells"].values()) and len(cfg["cells"]) == 6
    md = (runs["palu-infer_sweep"] / "run_summary.md").read_text().splitlines()
    assert md[2].startswith(f"**INTERRUPTED after {stop['cells_done']} of 6 cells** (SIGTERM: a time limit "
                            "(Slurm's) or a cancel, at ")
    missing = [c.split("::")[-1] for c in cfg["cells"] if c.split("::")[-1] not in raw["cells"]]
    assert [f"- {c}: not run (the run was interrupted by SIGTERM)" for c in missing] == \
        [line for line in md if line.endswith("(the run was interrupted by SIGTERM)")]
    err = (REPO / "slurm_logs" / f"palu-infer_sweep_{jobs['palu-infer_sweep']}.err").read_text()
    assert (f"gcompress-bench: INTERRUPTED after {stop['cells_done']} of 6 cells (SIGTERM: a time limit (Slurm's) or "
            f"a cancel, at {stop['at_utc']}") in err
    hits = []
    for name, run in runs.items():
        for f in ("config.json", "env.json", "raw.json", "summary.json", "run_summary.md"):
            assert (run / f).exists(), (run, f)
        env_json = json.loads((run / "env.json").read_text())
        assert env_json["slurm"]["SLURM_JOB_ID"] == str(jobs[name]) and env_json["hf_offline"]["HF_HUB_OFFLINE"] == "1"
        assert env_json["hf_offline"]["HF_HOME"] == str(standin_hf_home)
        raw = json.loads((run / "raw.json").read_text())
        assert all(c["status"] == "ok" for c in raw["cells"].values())
        assert raw["model_facts"]["revision"] and raw["model_facts"]["path"].startswith(str(standin_hf_home))
        if raw["variant"] == "palu":
            hits.append(raw["method_facts"]["calibration"]["cache_hit"])
        else:
            assert raw["method_facts"] is None   # baseline: the model as loaded
    assert sorted(hits) == [False, True, True]   # computed once under the lock, read by the other jobs
    left = sorted(p.name for p in (base / "cold-cache").rglob("*"))
    assert len([n for n in left if n.endswith(".pt")]) == 1 and not [n for n in left if ".tmp" in n], left
    print(f"night wall time: {hf_night['wall_s']:.0f} s")


@pytest.mark.late
def test_the_report_job_starts_after_slurm_forgot_the_night_and_names_every_state(local_slurm, hf_night):
    """Slurm at its default MinJobAge (300 s) forgets a finished job; the night's report job, released more than
    300 s after the first job ended, still tables every job's real state (from the jobs' own status files), and
    its report names the interrupted run and its missing cells."""
    base, jobs = Path(hf_night["base"]), hf_night["jobs"]
    night = base / "results" / "night"
    status = {name: json.loads((night / f"job-{jid}.json").read_text()) for name, jid in jobs.items()}
    first_end = min(_utc(st["end_utc"]) for st in status.values())
    deadline = max(_utc(st["end_utc"]) for st in status.values()) + 300 + 180   # MinJobAge + two purge passes
    while any(remembered(j) for j in jobs.values()):
        assert time.time() < deadline, "Slurm still remembers the night's jobs 480 s after they ended"
        time.sleep(5)
    released = time.time()
    assert released - first_end > 300
    subprocess.run(["scontrol", "release", str(hf_night["report"])], check=True)
    wait([hf_night["report"]])
    md = (base / "reports" / "night" / "report.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and
            line.split(" | ")[0][2:] in NIGHT_JOBS}
    for name, st in status.items():
        left = st["signal_time_left_s"]   # 0 when Slurm's check came after the limit itself
        state = "COMPLETED" if name != "palu-infer_sweep" else "**FAILED** (TIMEOUT, SIGTERM " + (
            f"{left} s before the time limit)" if left else "at the time limit)")
        assert rows[name] == (f"| {name} | {jobs[name]} | {state} | {st['exit_code']}:0 | {st['node']} | "
                              f"{st['start_utc']} | {st['end_utc']} | job status file | "
                              f"slurm_logs/{name}_{jobs[name]}.err |")
    palu = json.loads((Path(status["palu-infer_sweep"]["run_dir"]) / "raw.json").read_text())
    stop, run_id = palu["interrupted"], Path(status["palu-infer_sweep"]["run_dir"]).name
    missing = [c.split("::")[-1] for c in json.loads((Path(status["palu-infer_sweep"]["run_dir"]) / "config.json")
                                                     .read_text())["cells"] if c.split("::")[-1] not in palu["cells"]]
    palu_label = "palu group_size=3 calib_samples=2"   # the night's --palu-calib-samples=2 is off the default
    assert (f"- WARNING: {palu_label} run {run_id} was INTERRUPTED after {stop['cells_done']} of 6 cells "
            f"(SIGTERM); missing: {', '.join(missing)}") in md.splitlines()
    for cid in missing:   # each missing cell's palu column says why
        assert re.search(rf"\| {re.escape(cid)} \|.*\| not run: {run_id} was INTERRUPTED after {stop['cells_done']} "
                         r"of 6 cells \|", md), cid
    assert re.search(rf"\| {palu_label} \| {run_id} was INTERRUPTED after {stop['cells_done']} of 6 cells \| 1 \|", md)
    assert "| baseline | complete | 1 |" in md and f"- every timing run on one node: {status['palu-ppl']['node']}" in md
    assert "FALLBACK" not in md and "baber/piqa (HF datasets cache" in md and "Rowan/hellaswag (HF datasets" in md
    ppl = {v: json.loads((Path(status[f"{v}-ppl"]["run_dir"]) / "raw.json").read_text())["cells"]["test_ppl[S256]"]
           for v in ("baseline", "palu")}
    assert (f"| test_ppl[S256] | {ppl['baseline']['ppl']:.4f} | {ppl['palu']['ppl']:.4f} | "
            f"{ppl_ratio_cell(ppl['baseline'], ppl['palu'])} | Salesforce/wikitext wikitext-2-raw-v1 test (HF datasets "
            "cache") in md


def test_the_report_job_names_every_failed_job(slurm, tmp_path):
    ok = subprocess.run(["sbatch", "--parsable", "--mem=100M", "--output", "/dev/null", "--wrap", "true"],
                        capture_output=True, text=True).stdout.strip()
    bad = subprocess.run(["sbatch", "--parsable", "--mem=100M", "--output", "/dev/null", "--wrap", "exit 3"],
                         capture_output=True, text=True).stdout.strip()
    wait([ok, bad])
    # a job that wrote its start and was then killed outright (SIGKILL, a lost node), and one that left nothing
    (tmp_path / "results" / "g").mkdir(parents=True)
    (tmp_path / "results" / "g" / "job-999991.json").write_text(json.dumps(
        {"job_id": "999991", "node": "n7", "start_utc": "2026-12-01T01:00:00Z", "state": "RUNNING", "exit_code": None,
         "end_utc": None}))
    proc = subprocess.run(["bash", str(REPO / "slurm/night_report.sh"), str(tmp_path / "results"), "g",
                           str(tmp_path / "rep"), f"palu-ppl={bad}", f"baseline-ppl={ok}", "asvd-ppl=999991",
                           "prune-ppl=999992"], capture_output=True, text=True, env={**os.environ, "GC_REPO": str(REPO)})
    md = (tmp_path / "rep" / "report.md").read_text()
    memory = "scontrol: Slurm forgets a finished job after MinJobAge"   # no status file: these jobs ran --wrap
    assert re.search(rf"\| palu-ppl \| {bad} \| \*\*FAILED\*\* \(FAILED\) \| 3:0 \| \S+ \| \S+ \| \S+ \| {memory} \| "
                     rf"slurm_logs/palu-ppl_{bad}.err \|", md), md
    assert re.search(rf"\| baseline-ppl \| {ok} \| COMPLETED \| 0:0 \| \S+ \| \S+ \| \S+ \| {memory} \|", md), md
    assert ("| asvd-ppl | 999991 | **FAILED** (no end recorded: killed by SIGKILL, or its node failed) |  | n7 | "
            "2026-12-01T01:00:00Z |  | job status file | slurm_logs/asvd-ppl_999991.err |") in md
    assert ("| prune-ppl | 999992 | **FAILED** (UNKNOWN) |  |  |  |  | none: no status file, no accounting, and Slurm no "
            "longer remembers it | slurm_logs/prune-ppl_999992.err |") in md
    assert (f"No comparison: need baseline runs and at least one candidate (--reference/--candidate, or --exp-group "
            f"with both under {tmp_path / 'results'}/g)") in md and proc.returncode == 2


def test_a_sharded_night_of_a_plugin_method_merges_its_shards_and_is_reported(slurm, tmp_path):
    """Sharded infer_sweep and a plug-in method through real Slurm, in one night. Each variant's shards merge to
    the unsharded cell set, and each array task's own status file gives its row of the job table. The plug-in
    is registered by GCOMPRESS_METHODS alone (the jobs and the report job inherit it): its option reaches its
    jobs, its facts raw.json, its column the report."""
    out, ids = launch(tmp_path, *SMALL[:-1], SMALL[-1] + " --mlpprune-keep 0.8", "--variants", "baseline,mlpprune",
                      "--suites", "infer_sweep", "--shards", "2", "--exp-group", "plug", *JOB_RES,
                      env={**os.environ, **PLUGIN})
    assert len(ids) == 3   # per variant an array of 2 infer_sweep shards, then the report
    wait(ids)
    night = tmp_path / "results" / "plug"
    runs = {p.name.split("-", 2)[2]: p for p in night.iterdir() if p.is_dir()}   # beside: the jobs' status files
    assert sorted(runs) == ["baseline-infer_sweep-shard0", "baseline-infer_sweep-shard1",
                            "mlpprune-infer_sweep-shard0", "mlpprune-infer_sweep-shard1"]
    raw = {name: json.loads((run / "raw.json").read_text()) for name, run in runs.items()}
    unsharded = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pytest", "benchmarks", "-m", "prefill or decode",
                                "--co", "-q", *GRID.split()], capture_output=True, text=True, cwd=REPO).stdout
    expected = sorted(line.split("::")[1] for line in unsharded.splitlines() if "::" in line)
    for variant in ("baseline", "mlpprune"):
        cells = [c for shard in (0, 1) for c in raw[f"{variant}-infer_sweep-shard{shard}"]["cells"]]
        assert sorted(cells) == expected and len(set(cells)) == len(expected)
    report = json.loads((tmp_path / "reports" / "plug" / "report.json").read_text())
    assert sorted(r["cell"] for r in report["prefill"] + report["decode"]) == expected
    assert all(r["speedup"] for r in report["prefill"] + report["decode"])
    md = (tmp_path / "reports" / "plug" / "report.md").read_text()
    shard = next(run for name, run in runs.items() if name.startswith("baseline-infer")
                 and "test_prefill[B1-S16]" in raw[name]["cells"])
    p50 = json.loads((shard / "summary.json").read_text())["cells"]["test_prefill[B1-S16]"]["stats_ms"]
    p50 = p50["latency"]["p50"]
    # jobs share two cores here: the cell may be marked host-bound after its p50, and the report says so
    assert re.search(rf"\| test_prefill\[B1-S16\] \| {p50:.3f}( \*\*host-bound\*\*)? \|", md)
    for shard in (0, 1):
        assert raw[f"baseline-infer_sweep-shard{shard}"]["method_facts"] is None
        facts = raw[f"mlpprune-infer_sweep-shard{shard}"]["method_facts"]
        assert {k: facts[k] for k in ("keep", "intermediate", "original")} == {"keep": 0.8, "intermediate": 1228,
                                                                              "original": 1536}
        assert json.loads((runs[f"mlpprune-infer_sweep-shard{shard}"] / "config.json").read_text())["mlpprune"] == \
            {"keep": 0.8}
        for variant, jid in (("baseline", ids[0]), ("mlpprune", ids[1])):
            st = json.loads((night / f"job-{jid}_{shard}.json").read_text())
            assert (st["array_job_id"], st["array_task_id"], st["state"], st["exit_code"]) == (str(jid), str(shard),
                                                                                              "COMPLETED", 0)
            assert (f"| {variant}-infer_sweep | {jid}_{shard} | COMPLETED | 0:0 | {st['node']} | {st['start_utc']} | "
                    f"{st['end_utc']} | job status file | slurm_logs/{variant}-infer_sweep_{jid}_{shard}.err |") in md
    assert md.startswith("# baseline vs mlpprune keep=0.8\n")
    assert "- MLP intermediate 1228 of 1536" in md.splitlines()


@pytest.mark.parametrize("args, line", [
    (["--shards", "0"], "--shards: '0' is not allowed; allowed: a positive integer"),
    (["--variants", "baseline,nope"], "--variants: unknown variant 'nope'; allowed: baseline, palu, asvd, prune"),
    (["--variants", "baseline,mlpprune"], "--variants: unknown variant 'mlpprune'; allowed: baseline, palu, asvd, prune"),
    (["--variants", "palu,baseline,palu"], "--variants: 'palu' is given twice; allowed: each variant once"),
    (["--variants", ","], "--variants and --suites need at least one value each"),
    (["--suites", "ppl,bleu"], "--suites: unknown suite 'bleu'; allowed: infer_sweep, ppl, lmeval, longctx, dims"),
    (["--profile"], "--profile needs a value; see the header of"),
    (["--exp-group", "--dry-run"], "--exp-group needs a value"),
    (["--profile", "huge"], "the palu jobs would stop at once: gcompress-bench: --profile: unknown profile 'huge'; "
                            "allowed: full, long, quick"),
    (["--model", "nope/none"], "the palu jobs would stop at once: gcompress-bench: model 'nope/none' is not in the "
                               "local HF cache"),
    (["--variants", "baseline", "--suites", "ppl", "--model", "llama3-8b-shape"],
     "the baseline jobs would stop at once: gcompress-bench: --model: 'llama3-8b-shape' has synthetic weights"),
    (["--job-args", "--palu-group-size 2"], "gcompress-bench: --palu-group-size: 2 does not divide smollm2-135m's"),
    (["--variants", "baseline", "--suites", "ppl", "--exp-group", "../../../x"],
     "the baseline jobs would stop at once: gcompress-bench: --exp-group: '../../../x' is not allowed; allowed: one "
     "folder name (no '/', not '.' or '..')"),
    (["--variants", "baseline", "--suites", "infer_sweep", "--shards", "100", "--job-args", "--prefill-batch=1 "
      "--prefill-seq-len=16 --decode-batch=1 --decode-ctx=16 --decode-gen=4"],
     "--shards: 100 is more than the 2 infer_sweep cells; allowed: 1 to 2"),
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
    assert proc.returncode == 2 and proc.stderr == ("launch_llm_night: sbatch is not on PATH: run this on a Slurm login "
                                                    "node or use --dry-run (tests/local_slurm.sh starts a throwaway one "
                                                    "for the tests)\n")
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--exp-group", "g", "--no-gpu", "--allow-fallback",
                           "--results-root", str(tmp_path / "r"), "--reports-root", str(tmp_path / "rep")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and sum(line.startswith("sbatch ") for line in proc.stderr.splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]   # a dry run creates no folder
    assert "--gres=none" in proc.stderr
    assert "--dependency afterany:DRYRUN:DRYRUN:DRYRUN:DRYRUN:DRYRUN:DRYRUN" in proc.stderr


def dry_night(tmp_path, *args, env_extra=None):
    """A --dry-run night with an empty HF cache (so every checked variant's fallbacks are known, and allowed):
    (proc, the sbatch command lines as word lists)."""
    hf = tmp_path / "empty-hf"
    hf.mkdir()
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--results-root", str(tmp_path / "r"), "--reports-root",
                           str(tmp_path / "rep"), "--exp-group", "g", "--profile", "quick", "--allow-fallback", *args],
                          capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "GC_HF_HOME": str(hf), **(env_extra or {})})
    assert proc.returncode == 0, proc.stderr
    hf.rmdir()
    assert list(tmp_path.iterdir()) == []   # a dry run creates nothing
    return proc, [shlex.split(line)[1:] for line in proc.stderr.splitlines() if line.startswith("sbatch ")]


def job_args(cmd):
    """The words after run_llm.sbatch (or night_report.sh) in one sbatch command line."""
    script = next(i for i, w in enumerate(cmd) if w.endswith(("/run_llm.sbatch", "/night_report.sh")))
    return cmd[script + 1:]


def fallback_heads(stderr):
    return [line for line in stderr.splitlines() if line.startswith("launch_llm_night: WARNING:")]


def test_a_night_of_three_methods_is_nine_jobs_and_a_report(tmp_path):
    proc, cmds = dry_night(tmp_path, "--variants", "baseline,palu,asvd", "--no-gpu", "--timing-node", "n7",
                           "--constraint", "h100")
    assert len(cmds) == 10
    # the timing jobs on one node, every job on one node type
    assert [cmd[cmd.index("--nodelist") + 1] if "--nodelist" in cmd else None for cmd in cmds] == \
        ["n7", None, None] * 3 + [None]
    assert all(cmd[cmd.index("--constraint") + 1] == "h100" for cmd in cmds)
    stamp = re.fullmatch(r"(\d{8}-\d{6})-baseline-infer_sweep", job_args(cmds[0])[9])[1]
    night = list(product(("baseline", "palu", "asvd"), SUITES))
    for cmd, (v, s) in zip(cmds[:9], night):
        assert cmd[:2] == ["--job-name", f"{v}-{s}"] and "--gres=none" in cmd
        assert cmd[cmd.index("--export") + 1] == f"ALL,GC_REPO={REPO}"
        assert job_args(cmd) == ["--variant", v, "--suite", s, "--results-root", str(tmp_path / "r"), "--exp-group",
                                 "g", "--run-id", f"{stamp}-{v}-{s}", "--profile", "quick", "--", "--allow-fallback"]
    report = cmds[9]
    assert report[:2] == ["--job-name", "report-g"]
    assert report[report.index("--dependency") + 1] == "afterany:" + ":".join(["DRYRUN"] * 9)
    assert job_args(report) == [str(tmp_path / "r"), "g", str(tmp_path / "rep" / "g"),
                                *(f"{v}-{s}=DRYRUN" for v, s in night)]
    assert [line for line in proc.stdout.splitlines() if line.startswith("submitted ")] == [
        *(f"submitted {v}-{s}: job DRYRUN (logs {REPO}/slurm_logs/{v}-{s}_<job>.out/.err)" for v, s in night),
        "submitted report: job DRYRUN (after " + " ".join(["DRYRUN"] * 9) + ")"]
    # one --check-only session per method of the night, none for baseline (palu's and asvd's check all it does)
    assert fallback_heads(proc.stderr) == ["launch_llm_night: WARNING: the palu jobs would fall back:",
                                           "launch_llm_night: WARNING: the asvd jobs would fall back:"]
    assert "gcompress-bench check: asvd calibration: data/calibration.txt (FALLBACK: WikiText-2 train not in the HF " \
           "cache)" in proc.stderr.splitlines()


def test_a_night_whose_data_would_fall_back_is_not_submitted_without_allow_fallback(tmp_path):
    hf = tmp_path / "empty-hf"
    hf.mkdir()
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--results-root", str(tmp_path / "r"), "--reports-root",
                           str(tmp_path / "rep"), "--profile", "quick", "--variants", "baseline,palu", "--suites",
                           "ppl"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "GC_HF_HOME": str(hf)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", (
        "launch_llm_night: the palu jobs would fall back to stand-in data (palu calibration: data/calibration.txt "
        "(FALLBACK: WikiText-2 train not in the HF cache) and 1 more); fill the jobs' HF cache on a machine with "
        "network (tools/fill_hf_cache.py), or pass --allow-fallback\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-hf"] and list(hf.iterdir()) == []


def test_a_baseline_only_night_checks_baseline(tmp_path):
    proc, cmds = dry_night(tmp_path, "--variants", "baseline", "--suites", "ppl")
    assert [job_args(c)[:4] for c in cmds[:-1]] == [["--variant", "baseline", "--suite", "ppl"]]
    assert fallback_heads(proc.stderr) == ["launch_llm_night: WARNING: the baseline jobs would fall back:"]
    assert job_args(cmds[-1])[3:] == ["baseline-ppl=DRYRUN"]


def test_a_plugin_method_needs_no_edit_in_slurm(tmp_path):
    """GCOMPRESS_METHODS alone makes a plug-in a variant of the night, its options passed through to every job."""
    assert not [p for p in (REPO / "slurm").iterdir() if "mlpprune" in p.read_text()]
    proc, cmds = dry_night(tmp_path, "--variants", "baseline,mlpprune", "--job-args", "--mlpprune-keep 0.8",
                           env_extra=PLUGIN)
    assert len(cmds) == 7
    stamp = re.fullmatch(r"(\d{8}-\d{6})-baseline-infer_sweep", job_args(cmds[0])[9])[1]
    for cmd, (v, s) in zip(cmds[:6], product(("baseline", "mlpprune"), SUITES)):
        assert job_args(cmd) == ["--variant", v, "--suite", s, "--results-root", str(tmp_path / "r"), "--exp-group",
                                 "g", "--run-id", f"{stamp}-{v}-{s}", "--profile", "quick", "--",
                                 "--mlpprune-keep", "0.8", "--allow-fallback"]
    assert job_args(cmds[6])[3:] == [f"{v}-{s}=DRYRUN" for v, s in product(("baseline", "mlpprune"), SUITES)]
    assert fallback_heads(proc.stderr) == ["launch_llm_night: WARNING: the mlpprune jobs would fall back:"]


@pytest.mark.parametrize("args, env_extra, line", [
    (["--variants", "baseline,x"], {}, "--variants: unknown variant 'x'; allowed: baseline, palu, asvd, prune"),
    (["--variants", "baseline,x"], PLUGIN, "--variants: unknown variant 'x'; allowed: baseline, palu, asvd, prune, mlpprune"),
    (["--variants", "baseline,palu asvd"], {},
     "--variants: unknown variant 'palu asvd'; allowed: baseline, palu, asvd, prune"),
    (["--variants", "baseline,mlpprune"], {"GCOMPRESS_METHODS": "tests.plugins.no_such_method"},
     "--variants: cannot list the registered methods and suites (GCOMPRESS_METHODS='tests.plugins.no_such_method', "
     "GCOMPRESS_SUITES=''): GCOMPRESS_METHODS: cannot import 'tests.plugins.no_such_method' (No module named "
     "'tests.plugins.no_such_method'); allowed: importable module names, comma-separated"),
    (["--variants", "baseline,mlpprune", "--job-args", "--mlpprune-keep 1.5"], PLUGIN,
     "the mlpprune jobs would stop at once: gcompress-bench: --mlpprune-keep: 1.5 is not allowed; it must be in "
     "(0, 1]"),
    # the second method of the night is checked too: palu passes, asvd's calibration text is too short
    (["--variants", "baseline,palu,asvd", "--suites", "ppl", "--allow-fallback", "--job-args",
      "--asvd-calib {short}"], {},
     "the asvd jobs would stop at once: gcompress-bench: --asvd-calib: {short} has 3 tokens, fewer than the "
     "8 x 512 = 4096 that --asvd-calib-samples and --asvd-calib-seq-len ask for; allowed: a longer text or fewer "
     "samples"),
])
def test_launcher_refuses_a_bad_variant_in_one_exact_line(tmp_path, args, env_extra, line):
    short = tmp_path / "short.txt"
    short.write_text("a short text")
    args = [a.format(short=short) for a in args]
    proc = subprocess.run(["bash", str(LAUNCH), "--dry-run", "--results-root", str(tmp_path / "r"), "--reports-root",
                           str(tmp_path / "rep"), "--profile", "quick", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env={**os.environ, **env_extra})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"launch_llm_night: {line.format(short=short)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


@pytest.fixture
def stand_in_python(tmp_path):
    """A venv whose python prints its arguments, one a line: the job script's exact CLI command line."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    def go(*args, **extra):
        proc = subprocess.run(["bash", str(JOB), *args], capture_output=True, text=True, cwd=tmp_path,
                              env={**env, "GC_REPO": str(REPO), "GC_VENV": str(venv), "GC_CONDA_ENV": "no-such-env",
                                   **extra})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        head, *argv = proc.stdout.splitlines()
        return head, argv
    return go


@pytest.mark.parametrize("spelling", [
    ["--results_root", "R", "--run_id", "I", "--exp_group", "G"],
    ["--results-root", "R", "--run-id", "I", "--exp-group", "G"],
    ["--results-root=R", "--run-id=I", "--exp-group=G"],
    ["--out", "R", "--run_id=I", "--exp-group", "G"],
])
def test_job_script_takes_both_spellings_and_forwards_every_other_option(stand_in_python, spelling):
    head, argv = stand_in_python("--variant", "palu", "--suite", "ppl", *spelling, "--palu-group-size", "3",
                                 "--check-only", "--seed", "-1", "--prefill-batch=1,2", "--tasks", "piqa",
                                 "--", "--trials", "1")
    assert re.fullmatch(r"run_llm.sbatch: job none array none/none on \S+: palu ppl -> R/G/I", head)
    assert argv == ["-m", "gcompress_bench", "run", "--variant", "palu", "--suite", "ppl", "--results-root", "R",
                    "--exp-group", "G", "--run-id", "I", "--palu-group-size", "3", "--check-only", "--seed", "-1",
                    "--prefill-batch=1,2", "--tasks", "piqa", "--trials", "1"]


def test_job_script_passes_any_variant_a_bare_last_flag_and_its_shard(stand_in_python):
    head, argv = stand_in_python("--variant", "mlpprune", "--suite", "infer_sweep", "--run-id", "I", "--shards", "4",
                                 "--mlpprune-keep", "0.8", "--check-only", SLURM_ARRAY_TASK_ID="3")
    assert head.endswith(": mlpprune infer_sweep -> results/default/I-shard3")
    assert argv == ["-m", "gcompress_bench", "run", "--variant", "mlpprune", "--suite", "infer_sweep",
                    "--results-root", "results", "--exp-group", "default", "--run-id", "I-shard3", "--shard", "3/4",
                    "--mlpprune-keep", "0.8", "--check-only"]


def test_job_script_rejects_bad_input_before_loading_anything(tmp_path):
    cases = [
        (["--suite", "ppl"], "--variant is missing; allowed: baseline or a registered method (palu, asvd, prune, or a plug-in "
                             "from GCOMPRESS_METHODS)"),
        (["--variant", "", "--suite", "ppl"], "--variant needs a value"),
        (["--variant=", "--suite", "ppl"], "--variant needs a value"),
        (["--variant", "palu", "--suite", "ppl", "--run_id", "--check-only"], "--run_id needs a value"),
        (["--variant", "palu"], "--suite is missing; allowed: a registered job (infer_sweep, ppl, lmeval, longctx, dims, "
                                "or a plug-in's)"),
        (["--variant", "palu", "--suite", "ppl", "--shards", "-1"], "--shards: '-1' is not allowed; allowed: a "
                                                                     "positive integer"),
        (["--variant", "palu", "--suite", "ppl", "stray"], "unexpected argument 'stray'; allowed: options as --name "
                                                          "value, --name=value or a bare --flag (then -- and more CLI "
                                                          "options)"),
    ]
    for args, message in cases:
        proc = subprocess.run(["bash", str(JOB), *args], capture_output=True, text=True, cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"run_llm.sbatch: {message}\n"), args
    proc = subprocess.run(["bash", str(JOB), "--variant", "palu", "--suite", "ppl"], capture_output=True, text=True,
                          env={**os.environ, "GC_REPO": str(REPO), "GC_VENV": str(tmp_path / "novenv"),
                               "GC_CONDA_ENV": "no-such-env"})
    assert proc.returncode == 2
    assert proc.stderr == (f"run_llm.sbatch: no Python environment: conda env 'no-such-env' not found and no venv at "
                           f"{tmp_path / 'novenv'}; run 'bash tools/setup.sh' or set GC_CONDA_ENV / GC_VENV\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, line", [
    (["--variant", "x"], "gcompress-bench: --variant: unknown value 'x'; allowed: baseline, palu, asvd, prune, mlpprune"),
    (["--variant", "palu", "--suite", "bleu"], "gcompress-bench run: --suite: unknown suite 'bleu'; allowed: infer_sweep, "
                                               "ppl, lmeval, longctx, dims"),
    (["--variant", "mlpprune", "--mlpprune-keep", "1.5"],
     "gcompress-bench: --mlpprune-keep: 1.5 is not allowed; it must be in (0, 1]"),
])
def test_job_script_leaves_the_variant_and_method_options_to_the_cli(tmp_path, args, line):
    """The real CLI behind the job script, with a plug-in registered: it names a bad variant or option value in
    one stderr line (the job's .err log), exit 2, nothing written, under both spellings of the script's flags."""
    suite = [] if "--suite" in args else ["--suite", "ppl"]
    proc = subprocess.run(["bash", str(JOB), *args, *suite, "--results_root", str(tmp_path / "r"),
                           "--run_id", "i", "--exp-group", "g", "--model", "smollm2-135m", "--profile", "quick"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "GC_REPO": str(REPO), **PLUGIN})
    assert (proc.returncode, proc.stderr) == (2, line + "\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.system
def test_plug_ins_of_both_axes_run_end_to_end_with_no_edit_elsewhere(tmp_path):
    """tests/plugins/toy_suite.py registers the `entropy` suite and tests/plugins/toy_method.py the method
    `mlpprune`, from outside the package: their options join the CLI; the suite's cells run on the method's model,
    its summary table, progress line and comparison table appear; the method's facts, verification and summary
    line do; the night launcher takes the suite as a job; and nothing in the package, fixtures, benchmarks or
    slurm names either."""
    import numpy as np
    from scipy.special import logsumexp

    from gcompress_bench import models
    from gcompress_bench.config import resolve

    plug = {"GCOMPRESS_SUITES": "tests.plugins.toy_suite", "GCOMPRESS_METHODS": "tests.plugins.toy_method"}
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}", **plug}
    root = tmp_path / "res"
    for variant, extra in (("baseline", []), ("mlpprune", ["--mlpprune-keep", "0.5"])):
        proc = subprocess.run([sys.executable, "-m", "gcompress_bench", "run", "--suite", "entropy", "--variant", variant,
                               *extra, "--entropy-lengths", "8,16", "--out", str(root), "--exp-group", "g", "--run-id",
                               variant], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert re.search(r"\[2/2\] test_entropy\[L16\] ok entropy \d+\.\d{3} nats over 16 tokens", proc.stdout)
    raw = json.loads((root / "g/baseline/raw.json").read_text())
    assert list(raw["cells"]) == ["test_entropy[L8]", "test_entropy[L16]"]
    # the entropy of the first cell, recomputed here from the model's logits with scipy
    import torch
    spec = models.resolve("smollm2-135m", resolve({})["models"])
    lm = models.load(spec, "float32", torch.device("cpu"))
    ids = torch.randint(0, spec.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1234))
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0].double().numpy()
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    assert raw["cells"]["test_entropy[L8]"]["entropy"] == pytest.approx(float(-(np.exp(logp) * logp).sum(-1).mean()),
                                                                       rel=1e-9)
    assert "## entropy (nats per next token)" in (root / "g/baseline/run_summary.md").read_text()
    # the method: the harness ran around a plug-in that implements only compress (timed, measured, verified)
    pruned = json.loads((root / "g/mlpprune/raw.json").read_text())
    facts = pruned["method_facts"]
    assert {k: facts[k] for k in ("keep", "intermediate", "original")} == {"keep": 0.5, "intermediate": 768,
                                                                          "original": 1536}
    assert facts["memory"] == {"peak_allocated_bytes": None, "peak_reserved_bytes": None,
                               "reserved_after_release_bytes": None}   # (no CUDA here)
    assert facts["compress_s"] > 0 and facts["agreement_floor"] is None   # no measured table: finite logits only
    assert facts["verification"]["finite_logits"] and facts["verification"]["probe_tokens"] == 256
    assert 0 < facts["verification"]["top1_agreement"] < 1
    # 30 layers x 3 projections x 768 channels x 576 fewer parameters
    assert pruned["model_facts"]["parameters"] == 134_515_008 - 30 * 3 * 768 * 576
    assert "- mlpprune: MLP intermediate 768 of 1536" in (root / "g/mlpprune/run_summary.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "gcompress_bench", "compare", "--exp-group", "g", "--results-root",
                           str(root), "--out", str(tmp_path / "rep")], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep/report.md").read_text()
    assert md.startswith("# baseline vs mlpprune keep=0.5\n") and "## mlpprune" in md
    mlp = pruned["cells"]["test_entropy[L8]"]["entropy"]
    assert (f"| test_entropy[L8] | {raw['cells']['test_entropy[L8]']['entropy']} | 8 | {mlp} | 8 |") in md
    proc = subprocess.run([sys.executable, "-m", "gcompress_bench", "run", "--suite", "entropy", "--entropy-lengths",
                           "0", "--out", str(root)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
        2, "gcompress-bench: --entropy-lengths: [0] is not allowed; values must be positive integers")
    for args, why, plugins in ((["--variant", "mlpprune", "--mlpprune-keep", "0"],
                                "--mlpprune-keep: 0.0 is not allowed; it must be in (0, 1]", plug),
                               (["--variant", "mlpprune"], "--variant: unknown value 'mlpprune'; allowed: baseline, "
                                                           "palu, asvd, prune", {})):   # not registered without it
        proc = subprocess.run([sys.executable, "-m", "gcompress_bench", "run", *args, "--out", str(root)],
                              capture_output=True, text=True, cwd=REPO, timeout=300,
                              env={**{k: v for k, v in env.items() if k not in plug}, **plugins})
        assert (proc.returncode, proc.stderr.splitlines()) == (2, [f"gcompress-bench: {why}"])
    night = tmp_path / "night"
    night.mkdir()
    _, cmds = dry_night(night, "--variants", "baseline,mlpprune", "--suites", "entropy", "--no-gpu",
                        env_extra={"PYTHONPATH": str(REPO), **plug})
    assert [job_args(c)[:4] for c in cmds[:2]] == [["--variant", v, "--suite", "entropy"] for v in ("baseline",
                                                                                                   "mlpprune")]
    named = subprocess.run(["grep", "-rlw", "--exclude=*.pyc", "entropy", "src", "fixtures", "benchmarks", "slurm"], cwd=REPO,
                           capture_output=True, text=True).stdout.split()
    assert named == []
