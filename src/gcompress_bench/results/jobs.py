"""A night's job table: what each Slurm job wrote about itself (job-<id>.json in the night's results folder, by
slurm/run_llm.sbatch), else Slurm's accounting (sacct, where it is on), else the controller's memory (scontrol,
which forgets a finished job after MinJobAge, 300 s by default). Each row names its source.

    python -m gcompress_bench.results.jobs NIGHT_DIR NAME=JOBID ... > jobs.md
"""
import json
import re
import subprocess
import sys
from pathlib import Path

FIELDS = ("state", "exit_code", "node", "start", "end")
FORGETS = "scontrol: Slurm forgets a finished job after MinJobAge"


def _ask(*cmd):
    """A Slurm client's stdout, or "" where it is missing, refuses (no accounting) or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def from_status_files(night, job_id):
    """{task id: row} from the job's own status files (one per array task)."""
    rows = {}
    for path in sorted(Path(night).glob(f"job-{job_id}.json")) + sorted(Path(night).glob(f"job-{job_id}_*.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        code = s.get("exit_code")
        rows[path.stem.removeprefix("job-")] = {
            "state": s.get("state"), "exit_code": "" if code is None else f"{code}:0", "node": s.get("node"),
            "start": s.get("start_utc"), "end": s.get("end_utc"), "source": "job status file",
            "time_left_s": s.get("signal_time_left_s")}
    return rows


def from_sacct(job_id):
    rows = {}
    for line in _ask("sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode,NodeList,Start,End"
                     ).splitlines():
        jid, state, code, node, start, end = (line.split("|") + [""] * 6)[:6]
        rows[jid] = {"state": state.split()[0] if state else "", "exit_code": code, "node": node, "start": start,
                     "end": end, "source": "sacct"}
    return rows


def from_scontrol(job_id):
    rows = {}
    for line in _ask("scontrol", "show", "job", "-o", str(job_id)).splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in f:
            continue
        task = f.get("ArrayTaskId")
        jid = f"{f.get('ArrayJobId')}_{task}" if task else f["JobId"]
        rows[jid] = {"state": f.get("JobState", ""), "exit_code": f.get("ExitCode", ""), "node": f.get("NodeList"),
                     "start": f.get("StartTime"), "end": f.get("EndTime"), "source": FORGETS}
    return rows


def rows(night, pairs):
    """One row per job (per task of an array): its name, id, the fields of FIELDS, source and log."""
    out = []
    for name, job_id in pairs:
        found = from_status_files(night, job_id)
        asked = {}
        # a job that wrote no end (killed, its node failed) or no file: ask Slurm's accounting, then its memory
        if not found or any(r["state"] == "RUNNING" for r in found.values()):
            asked = from_sacct(job_id) or from_scontrol(job_id)
        for jid in sorted({*found, *asked}) or [str(job_id)]:
            row = found.get(jid)
            if row is None or (row["state"] == "RUNNING" and jid in asked):
                row = asked.get(jid) or {"state": "UNKNOWN", "exit_code": "", "node": "", "start": "", "end": "",
                                         "source": "none: no status file, no accounting, and Slurm no longer "
                                                   "remembers it"}
            out.append({"name": name, "id": jid, **row, "log": f"slurm_logs/{name}_{jid}.err"})
    return out


def _state(r):
    if r["state"] == "COMPLETED":
        return "COMPLETED"
    if r["state"] == "RUNNING":   # the report runs after every job: this one ended without writing its end
        return "**FAILED** (no end recorded: killed by SIGKILL, or its node failed)"
    left, lead = r.get("time_left_s"), ""
    if r["state"] == "TIMEOUT" and left is not None:   # Slurm's --signal lead, or the limit itself
        lead = f", SIGTERM {left} s before the time limit" if left else ", SIGTERM at the time limit"
    return f"**FAILED** ({r['state']}{lead})"


def markdown(table):
    lines = ["## Jobs", "", "| job | id | state | exit code | node | start | end | source | logs |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['id']} | {_state(r)} | {r['exit_code']} | {r['node'] or ''} | {r['start'] or ''} | "
              f"{r['end'] or ''} | {r['source']} | {r['log']} |" for r in table]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print("usage: python -m gcompress_bench.results.jobs NIGHT_DIR NAME=JOBID ...", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(rows(argv[0], [a.split("=", 1) for a in argv[1:]])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
