"""Shared on-disk caches (dequantized models, whitening factors), safe when a night's jobs all start
on a cold cache at the same moment.

An entry is built once per key: the first process takes the key's lock and builds into a name of
its own, then renames it into place; the others wait on the lock and then find the finished entry.
The rename alone already keeps readers from ever seeing half an entry, so where file locks don't
work (some network filesystems) the worst case is duplicated work: an existing complete entry wins
and the late copy is discarded. Lock files (`.<name>.lock`, empty) stay beside their entries.
"""
import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def _locked(target):
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        with contextlib.suppress(OSError):   # no locks here: the atomic rename still keeps entries whole
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def build_once(target, build):
    """`target` (a file or folder), built by `build(tmp)` into a private name unless a complete entry
    exists. Returns True if this process built it."""
    target = Path(target)
    if target.exists():
        return False
    with _locked(target):
        if target.exists():
            return False
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            build(tmp)
            try:
                os.rename(tmp, target)   # atomic; a folder can't replace a non-empty one
            except OSError:
                if not target.exists():
                    raise
                return False
            return True
        finally:
            _remove(tmp)
