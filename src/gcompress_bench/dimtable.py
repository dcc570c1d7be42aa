"""The dims sweep table (dims_table.json, written by a `-m dims` run): its operators, its format, and what
"aligned" means. A leaf, so the alignment policy (methods) and the dims suite both read it without importing
each other."""
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

from gcompress_bench import UsageError

TABLE_FILE = "dims_table.json"
ALIGNMENTS = (8, 16, 32, 64)


@dataclass(frozen=True)
class Op:
    sweeps: tuple    # dims a YAML entry may sweep
    loops: tuple     # list-valued keys: each value its own series
    dims: tuple      # every shape key, in the order records show them (loops, then the operator's dims)


OPS = {
    "lowrank": Op(("r",), ("M",), ("M", "d_in", "r", "d_out")),
    "gemm": Op(("n", "k"), ("M",), ("M", "k", "n")),
    "sdpa": Op(("head_dim",), ("batch", "seq"), ("batch", "seq", "heads", "kv_heads", "head_dim")),
}


def device_name(device):
    """What a table is keyed by: the GPU's name, or the CPU's."""
    import torch  # only here: reading or checking a table needs no torch
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}"



TABLE_EXPECTED = (f"a {TABLE_FILE} written by a `-m dims` run (device_name, dtype, and series of op, sweep, shape "
                  "and points of value and a finite, positive p50_ms), or the run dir that holds it")


def load_table(path):
    """A table from its file or its run dir; anything else is one UsageError line naming the file."""
    path = Path(path)
    file = path / TABLE_FILE if path.is_dir() else path
    try:
        t = json.loads(file.read_text())
    except FileNotFoundError:
        raise UsageError(f"{file}: missing; allowed: {TABLE_EXPECTED}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{file}: not readable JSON ({type(e).__name__}); allowed: {TABLE_EXPECTED}") from None
    if not _well_formed(t):
        raise UsageError(f"{file}: malformed; allowed: {TABLE_EXPECTED}")
    return t


def _well_formed(t):
    number = (int, float)
    return (isinstance(t, dict) and isinstance(t.get("device_name"), str) and isinstance(t.get("dtype"), str)
            and isinstance(t.get("series"), list)
            and all(isinstance(s, dict) and s.get("op") in OPS and s.get("sweep") in OPS[s["op"]].sweeps
                    and isinstance(s.get("shape"), dict) and isinstance(s.get("points"), list)
                    and all(isinstance(p, dict) and isinstance(p.get("value"), int)
                            and isinstance(p.get("p50_ms"), number) and math.isfinite(p["p50_ms"])
                            and p["p50_ms"] > 0 for p in s["points"])
                    for s in t["series"]))


def check_device(table, device):
    """A table holds one device's kernel choices; applying it on another device would be guessing."""
    here = device_name(device)
    if table["device_name"] != here:
        raise UsageError(f"dims table: a table measured on {table['device_name']!r} is not applied on {here!r}; "
                         "allowed: a table measured on this device")


def cliffs(points, threshold=0.10):
    """Neighbouring points whose p50 differ by more than `threshold` of the faster one (so a step up and the
    same step back down count alike): where the library changed kernels."""
    out = []
    for a, b in zip(points, points[1:]):
        ratio = b["p50_ms"] / a["p50_ms"]
        if max(ratio, 1 / ratio) - 1 > threshold:
            out.append({"from": a["value"], "to": b["value"], "ratio": ratio,
                        "kernels_from": a["kernels"], "kernels_to": b["kernels"]})
    return out


def alignment(value):
    """The largest alignment (8, 16, 32, 64) that divides value, or None."""
    return next((a for a in sorted(ALIGNMENTS, reverse=True) if value % a == 0), None)


def aligned_share(dims):
    """{alignment: share of dims that are its multiples} (None for no dims), as every method records it."""
    dims = list(dims)
    return {str(a): sum(d % a == 0 for d in dims) / len(dims) if dims else None for a in ALIGNMENTS}
