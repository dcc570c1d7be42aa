"""Run directories: results/<exp_group>/<run_id>/, never overwritten, raw.json replaced atomically."""
import json
import math
import os
import re
import time
from pathlib import Path

from gcompress_bench import UsageError

SCHEMA = 1


class ResultsError(Exception):
    """A result file that cannot be read: names the file."""


def default_run_id(variant, suites, model):
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", model.rstrip("/").split("/")[-1]).strip("-")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{variant}-{'+'.join(suites)}-{slug}"


def write_json(path, obj):
    """Write-then-rename, so a reader or a crash never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str, allow_nan=False) + "\n")   # strict JSON: no NaN
    os.replace(tmp, path)


def non_finite(obj, where=""):
    """Paths of every NaN or infinity in a record (nested dicts and lists)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where or "value"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{where}[{i}]")]
    return []


def finite_or_none(obj):
    """The record with every NaN or infinity replaced by None, so it can be stored as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path):
    """A results file as strict JSON (no NaN or Infinity, which this suite never writes)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); the file is corrupted or truncated") from None
    except ValueError as e:
        raise ResultsError(f"{path}: not strict JSON ({e}); the file was edited or corrupted") from None


def create_run_dir(root, exp_group, run_id, explicit):
    """A fresh folder. An explicit run id that exists is refused; a generated one gets a suffix."""
    root = Path(root)
    try:
        (root / exp_group).mkdir(parents=True, exist_ok=True)
        probe = root / exp_group / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--results-root: {str(root)!r} is not writable ({e.strerror}); "
                         "allowed: a folder this user can create and write") from None
    path = root / exp_group / run_id
    n = 1
    while True:
        try:
            path.mkdir()   # atomic: of two processes asking for one name, exactly one gets it
            return path
        except FileExistsError:
            if explicit:
                raise UsageError(f"--run-id: {run_id!r} already exists at {path}; results are never overwritten: "
                                 "choose a new run id") from None
            n += 1
            path = root / exp_group / f"{run_id}-{n}"


CELLS_LOG = "cells.jsonl"   # finished cells, one JSON line each, while a run is going


class RawLog:
    """raw.json: the run's facts and every finished cell. Each cell is appended to cells.jsonl as it finishes
    (one line, written and synced at once: a run's cost stays linear in its cells), and raw.json is rewritten
    whole only for the run's own facts and once at the end, with every cell; a killed run's cells are in
    cells.jsonl, which every reader merges (load_raw). A record that is not strict JSON is refused before
    anything changes, so one bad value cannot jam the log."""

    def __init__(self, run_dir, header):
        self.path = Path(run_dir) / "raw.json"
        self.cells_path = self.path.with_name(CELLS_LOG)
        self.data = {"schema": SCHEMA, **header, "cells": {}}
        write_json(self.path, self.data)

    def set(self, **facts):
        """Facts measured about the run as a whole (the model's, the method's), beside its cells."""
        self._checked(f"facts {sorted(facts)}", facts)
        self.data.update(facts)
        self._write_facts()

    def add(self, cell_id, record):
        line = self._checked(f"cell {cell_id}", {"cell": cell_id, "record": record})
        with open(self.cells_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.data["cells"][cell_id] = record
        self.data["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _checked(self, what, obj):
        """obj as one strict JSON line; a refused one changes nothing but the log's list of refused writes
        (raw.json's `refused`), which is written at once, and raises ValueError."""
        try:
            return _strict(obj)
        except ValueError as e:
            self.data.setdefault("refused", []).append(f"{what}: {e}")
            self._write_facts()
            raise

    def finish(self):
        """raw.json with every cell in it, those of cells.jsonl included (a stop may land between a cell's
        line and its entry here); cells.jsonl is then no longer needed."""
        self.data["cells"] = load_raw(self.path.parent)["cells"] | self.data["cells"]
        write_json(self.path, self.data)
        self.cells_path.unlink(missing_ok=True)

    def _write_facts(self):
        # the cells so far stay in cells.jsonl until finish(); raw.json carries the facts
        write_json(self.path, {**self.data, "cells": {}} if self.cells_path.exists() else self.data)


def _strict(obj):
    """obj as one line of strict JSON, or ValueError naming what is not (nothing is written)."""
    try:
        return json.dumps(obj, default=str, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"raw log: refused a record that is not strict JSON ({e}): {non_finite(obj)[:3]}") from None


def load_raw(run_dir):
    """A run's raw.json with the cells its cells.jsonl holds beyond it (a run that was killed before its
    end); a torn last line (killed mid-write) is left out."""
    run_dir = Path(run_dir)
    raw = read_json(run_dir / "raw.json")
    log = run_dir / CELLS_LOG
    if isinstance(raw, dict) and isinstance(raw.get("cells"), dict) and log.exists():
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            raw["cells"].setdefault(entry["cell"], entry["record"])
    return raw
