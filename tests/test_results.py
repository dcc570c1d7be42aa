import json

import pytest

from gcompress_bench import UsageError
from gcompress_bench.results.store import RawLog, ResultsError, create_run_dir, read_json


def test_run_dir_is_never_reused(tmp_path):
    first = create_run_dir(tmp_path, "g", "r1", explicit=False)
    (first / "raw.json").write_text("{}")
    second = create_run_dir(tmp_path, "g", "r1", explicit=False)
    assert second.name == "r1-2" and (first / "raw.json").read_text() == "{}"
    with pytest.raises(UsageError, match=r"--run-id: 'r1' already exists at .*; results are never overwritten"):
        create_run_dir(tmp_path, "g", "r1", explicit=True)


def test_unwritable_root_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"--results-root: '.*file/sub' is not writable \(Not a directory\)"):
        create_run_dir(blocker / "sub", "g", "r", explicit=False)


def test_raw_log_is_complete_after_each_cell(tmp_path):
    log = RawLog(tmp_path, {"run_id": "r"})
    for i in range(3):
        log.add(f"c{i}", {"status": "ok", "i": i})
        on_disk = json.loads((tmp_path / "raw.json").read_text())
        assert list(on_disk["cells"]) == [f"c{j}" for j in range(i + 1)]
    assert not list(tmp_path.glob(".raw.json.tmp*"))


def test_corrupt_json_names_the_file(tmp_path):
    bad = tmp_path / "raw.json"
    bad.write_text('{"cells": {"a": [1, 2')
    with pytest.raises(ResultsError, match=rf"{bad}: not valid JSON .*corrupted or truncated"):
        read_json(bad)


def test_report_tool_names_a_truncated_raw_json(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO
    (tmp_path / "raw.json").write_text('{"schema": 1, "cells": {"a"')
    proc = subprocess.run([sys.executable, str(REPO / "tools/report.py"), str(tmp_path)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"report: {tmp_path / 'raw.json'}: not valid JSON")


def test_a_new_record_field_reaches_the_summary_and_samples_become_statistics(tmp_path):
    """No key list stands between a cell's record and summary.json: only per-sample data is replaced."""
    from gcompress_bench.results.report import build_summary

    log = RawLog(tmp_path, {"run_id": "r", "variant": "baseline", "model": "m", "timer": "host"})
    samples = [[3.0, 1.0, 2.0], [5.0, 4.0]]
    log.add("test_prefill[B1-S4]", {"suite": "prefill", "params": {"batch": 1, "seq_len": 4}, "status": "ok",
                                    "tokens": 4, "samples_ms": {"latency": samples}, "brand_new": {"x": 1}})
    (tmp_path / "config.json").write_text(json.dumps({"variant": "baseline", "suites": ["infer_sweep"],
                                                      "prefill": {"warmup": 0, "iters": 3, "trials": 2},
                                                      "decode": {"warmup": 0, "iters": 3, "trials": 2}}))
    (tmp_path / "env.json").write_text("{}")
    cell = build_summary(tmp_path)["cells"]["test_prefill[B1-S4]"]
    assert cell["brand_new"] == {"x": 1} and "samples_ms" not in cell
    assert cell["stats_ms"]["latency"]["p50"] == 3.0 and cell["tokens_per_s"] == 4 / (3.0 / 1e3)
