"""Runs many CLI invocations in one interpreter (the CLIs call pytest.main in-process), each with its
stdout and stderr captured at the file-descriptor level, and reports for each: exit code, stderr lines,
the files it left under the results root, and the seconds it took. Used by test_integrity's bad-input sweep.

    python -m tests.bad_input_driver CASES.json OUT.json
CASES.json: [{"cli": "llm_run" | "llm_eval", "args": [...], "root": RESULTS_ROOT}, ...]
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from gcompress_bench import cli, llm_eval, llm_run

SUITES = {"llm_run": (llm_run.SUITES, llm_run.DEFAULT), "llm_eval": (llm_eval.SUITES, llm_eval.DEFAULT)}


def _files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")) if Path(root).exists() else []


def run_case(case):
    start = time.monotonic()
    before = _files(case["root"])
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
        # pytest's unraisable-exception plugin runs gc.collect() five times per session: seconds in a
        # process holding torch and transformers, for nothing a bad-input case can raise
        rc = cli.run(case["cli"], *SUITES[case["cli"]], ["--out", case["root"], *case["args"], "--", "-p",
                                                         "no:unraisableexception"])
    except SystemExit as e:   # argparse's own errors
        rc = e.code
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    err.seek(0)
    return {"rc": rc, "stderr": err.read().decode(errors="replace").splitlines(),
            "new_files": sorted(set(_files(case["root"])) - set(before)), "s": round(time.monotonic() - start, 2)}


def main(cases_path, out_path):
    cases = json.loads(Path(cases_path).read_text())
    Path(out_path).write_text(json.dumps([run_case(c) for c in cases], indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
