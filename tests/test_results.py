import json

import pytest

from gcompress_bench import UsageError
from gcompress_bench.results.store import RawLog, ResultsError, create_run_dir, load_raw, read_json


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


def test_raw_log_is_complete_after_each_cell_and_appends_one_line_per_cell(tmp_path):
    log = RawLog(tmp_path, {"run_id": "r"})
    raw_json = (tmp_path / "raw.json").read_text()
    for i in range(3):
        log.add(f"c{i}", {"status": "ok", "i": i})
        assert list(load_raw(tmp_path)["cells"]) == [f"c{j}" for j in range(i + 1)]
        # a cell costs one appended line, not a rewrite of everything before it
        assert (tmp_path / "raw.json").read_text() == raw_json
        assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == i + 1
    log.set(model_facts={"parameters": 7})
    assert load_raw(tmp_path)["model_facts"] == {"parameters": 7} and len(load_raw(tmp_path)["cells"]) == 3
    log.finish()   # the run's end: one self-contained raw.json, as every reader knows it
    assert json.loads((tmp_path / "raw.json").read_text())["cells"] == {f"c{i}": {"status": "ok", "i": i}
                                                                       for i in range(3)}
    assert not (tmp_path / "cells.jsonl").exists() and not list(tmp_path.glob(".raw.json.tmp*"))


def test_a_record_that_is_not_strict_json_is_refused_and_jams_nothing(tmp_path):
    log = RawLog(tmp_path, {"run_id": "r"})
    log.add("c0", {"status": "ok"})
    with pytest.raises(ValueError, match=r"raw log: refused a record that is not strict JSON .*\['record.p50'\]"):
        log.add("c1", {"status": "ok", "p50": float("nan")})
    with pytest.raises(ValueError, match=r"not strict JSON .*\['facts.x'\]"):
        log.set(facts={"x": float("inf")})
    log.add("c2", {"status": "ok"})   # later writes still work, and nothing refused reached the log
    log.finish()
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert list(raw["cells"]) == ["c0", "c2"] and "facts" not in raw
    assert [r.split(":")[0] for r in raw["refused"]] == ["cell c1", "facts ['facts']"]   # and the refusals are on record


def test_a_killed_runs_cells_are_read_from_its_cell_log_and_a_torn_line_is_left_out(tmp_path):
    log = RawLog(tmp_path, {"run_id": "r", "variant": "baseline", "model": "m", "timer": "host"})
    log.add("c0", {"status": "ok", "i": 0})
    log.add("c1", {"status": "ok", "i": 1})
    with open(tmp_path / "cells.jsonl", "a") as f:
        f.write('{"cell": "c2", "rec')   # killed mid-write
    assert load_raw(tmp_path)["cells"] == {"c0": {"status": "ok", "i": 0}, "c1": {"status": "ok", "i": 1}}


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
