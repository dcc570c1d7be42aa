"""No committed file outside the source holds an absolute path of the machine it was written on: run dirs,
reports, logs and docs name the checkout `<repo>`, the suite's cache `<cache>`, an HF home `<hf_home>`,
a temporary folder `<tmp>/...` and a home `<home>/...` (data/evidence/README.md)."""
import re
import shutil
import subprocess

import pytest

from .conftest import REPO

SOURCE = (".py", ".sh")   # code may name the temporary folder in its defaults and its docs
BINARY = (".png", ".jpg", ".jpeg", ".gif", ".pdf", ".safetensors", ".gguf", ".bin", ".pt", ".pth", ".npy", ".npz",
          ".gz", ".zip", ".tar", ".xz", ".parquet", ".arrow", ".db", ".sqlite")


def _abs(*parts):
    """An absolute path built from its parts, so this file itself names no machine's folder."""
    return "/" + "/".join(parts)


def machine_path_pattern(repo):
    """A home (root's, or /home/NAME/), the temporary folder or the checkout itself, up to the path's end."""
    homes = "|".join(re.escape(_abs(d, "")) for d in ("root", "tmp"))   # spelt in parts: this file names none
    return re.compile(r"(?<![\w.~-])(?:" + homes + r"|/home/[\w.-]+/|" + re.escape(str(repo)) + r"(?![\w.-]))"
                      r"[^\s\"'`)\],;]*")


MACHINE_PATH = machine_path_pattern(REPO)


def committed_files():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def machine_paths(text, pattern=MACHINE_PATH):
    return sorted({m.group(0) for m in pattern.finditer(text)})


def test_the_pattern_finds_machine_paths_and_leaves_placeholders():
    repo = "/srv/ckout"   # wherever this checkout lives, even under a temporary folder
    pat = machine_path_pattern(repo)
    tmp, home, root = _abs("tmp", "ex", "results"), _abs("home", "ann", ".cache", "x"), _abs("root", "out", "runs")
    assert machine_paths(f'"dir": "{repo}/docs", "x": "{tmp}", "h": "{home}"', pat) == [home, f"{repo}/docs", tmp]
    assert machine_paths(f"rootdir: {root} and {_abs('root', '')}", pat) == [_abs("root", ""), root]
    assert machine_paths(f"rootdir: {repo}\n", pat) == [repo]
    bare = _abs("tmp")   # the folder named alone, as docs say "node-local <it>"
    assert machine_paths("<repo>/benchmarks <tmp>/q16/res <home>/out <cache>/models "
                         f"results{_abs('tmp', 'x')} ~{_abs('tmp', 'y')} node-local {bare} default, torch's {bare}",
                         pat) == []
    assert machine_paths(f"{repo}-old/x {repo}.bak", pat) == []
    assert machine_paths(f"{REPO}/data")   # this checkout's own path


def test_no_committed_data_file_holds_a_machine_path():
    bad = {}
    for name in committed_files():
        if name.endswith(SOURCE) or name.lower().endswith(BINARY) or name.startswith(".git/"):
            continue
        path = REPO / name
        if not path.is_file():   # staged for deletion, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        found = machine_paths(text)
        if found:
            bad[name] = found
    assert not bad, "absolute machine paths in committed files (use <repo>, <cache>, <hf_home>, <tmp>, <home>):\n" + \
        "\n".join(f"  {name}: {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}"
                  for name, found in sorted(bad.items()))
