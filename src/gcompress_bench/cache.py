"""Shared on-disk caches (dequantized models, whitening factors): verified on every use, and safe
when a night's jobs all start on a cold cache at the same moment.

An entry is a folder built once per key: the first process takes the key's lock, builds into a name
of its own, stores a sha256 of every file beside them, and renames the folder into place; the others
wait on the lock and then find the finished entry. Every use checks the stored sha256s, so a
truncated or overwritten file is found, and the entry is rebuilt (and the caller told why) instead of
feeding a wrong model or NaN factors into a run. The rename alone keeps readers from ever seeing half
an entry, so where file locks don't work (some network filesystems) the worst case is duplicated
work. Lock files (`.<name>.lock`, empty) and remembered hashes (`.sha256-memo/`) stay beside the entries.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

CHECKSUMS = ".sha256.json"
MEMO = ".sha256-memo"   # sha256 of unchanged files (same path, size, mtime, inode), so a check costs a stat


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**24), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path, memo_dir):
    """sha256 of a large file, remembered by its path, size, mtime and inode, so an unchanged file is
    hashed once and a file replaced in place is hashed again."""
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()
    memo = Path(memo_dir) / key
    with contextlib.suppress(OSError):
        return memo.read_text()
    digest = sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private(memo, "tmp")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest


@contextlib.contextmanager
def _locked(target):
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        with contextlib.suppress(OSError):   # no locks here: the atomic rename still keeps entries whole
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _private(target, what):
    return target.with_name(f".{target.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def checksums(folder):
    """{relative path: sha256} of every file in `folder` (the stored checksums excepted)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}


def problem(folder):
    """None when every file matches the sha256 stored when the entry was built, else what is wrong. A file
    written to or truncated since its last check (a new mtime or size) is hashed again."""
    folder = Path(folder)
    try:
        stored = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{folder / CHECKSUMS} is missing or unreadable"
    for name, want in stored.items():
        try:
            got = file_sha256(folder / name, folder.parent / MEMO)
        except OSError:
            return f"{folder / name} is missing"
        if got != want:
            return f"{folder / name} does not match its stored sha256 ({got[:12]}, stored {want[:12]})"
    return None


def entry(target, build):
    """The verified folder `target`, built by `build(tmp)` unless a sound entry exists.
    Returns how it was found: "hit", "built", or "rebuilt: <what was wrong>"."""
    target = Path(target)
    if target.exists() and problem(target) is None:
        return "hit"
    with _locked(target):
        why = problem(target) if target.exists() else None
        if target.exists() and why is None:   # another process rebuilt it while this one waited
            return "hit"
        if why:
            aside = _private(target, "corrupt")
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp = _private(target, "tmp")
        try:
            tmp.mkdir()
            build(tmp)
            (tmp / CHECKSUMS).write_text(json.dumps(checksums(tmp), indent=1))
            try:
                os.rename(tmp, target)   # atomic; a folder can't replace a non-empty one
            except OSError:
                if not target.exists():
                    raise
                return "hit"             # a sound entry appeared meanwhile (no working lock): it wins
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return f"rebuilt: {why}" if why else "built"
