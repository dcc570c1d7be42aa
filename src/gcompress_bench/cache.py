"""Shared on-disk caches (dequantized models, whitening factors): verified by content, and safe when a
night's jobs all start on a cold cache at the same moment.

An entry is a folder built once per key: the first process takes the key's lock, builds into a name
of its own, stores a digest of every file beside them, and renames the folder into place; the others
wait on the lock and then find the finished entry. Each process hashes an entry's files the first time it
uses them (the digest is a sha256 over 64 MiB blocks, hashed in parallel), so a truncated or overwritten
file is found whatever its metadata says, and the entry is rebuilt (and the caller told why) instead of
feeding a wrong model or NaN factors into a run. Reading a sound entry writes nothing and takes no lock:
a read-only cache, or another user's, is used as it is. The rename alone keeps readers from ever seeing
half an entry, so where file locks don't work (some network filesystems) the worst case is duplicated
work. Lock files (`.<name>.lock`, empty) stay beside the entries; a build killed before its rename leaves
a `.<name>.tmp-<pid>-…` folder, removed by the next build of that key once its process is gone.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHECKSUMS = ".blocks-sha256.json"
BLOCK = 64 * 2**20      # a digest's block: blocks of one file hash on separate threads
_digests = {}           # this process's digests, by (real path, size, mtime, inode)


def _block(path, i):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(i * BLOCK)
        left = BLOCK
        while left and (chunk := f.read(min(left, 2**22))):
            h.update(chunk)
            left -= len(chunk)
    return h.digest()


def digest(path):
    """A file's content digest: the sha256 of its 64 MiB blocks' sha256s, the blocks hashed on a thread
    pool (hashlib releases the GIL), so a large model checks at the disk's pace rather than one core's.
    Hashed once per process per file version; nothing is remembered on disk, where it could go stale."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        n = max(1, -(-st.st_size // BLOCK))
        with ThreadPoolExecutor(min(n, os.cpu_count() or 1)) as pool:
            _digests[key] = hashlib.sha256(b"".join(pool.map(lambda i: _block(path, i), range(n)))).hexdigest()
    return _digests[key]


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
    """{relative path: digest} of every file in `folder` (the stored checksums excepted)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}


def problem(folder):
    """None when every file's content matches the digest stored when the entry was built, else what is
    wrong. Writes nothing."""
    folder = Path(folder)
    try:
        stored = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{folder / CHECKSUMS} is missing or unreadable"
    for name, want in stored.items():
        try:
            got = digest(folder / name)
        except OSError:
            return f"{folder / name} is missing"
        if got != want:
            return f"{folder / name} does not match its stored digest ({got[:12]}, stored {want[:12]})"
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
        _remove_orphans(target)
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
            _share(tmp)
            try:
                os.rename(tmp, target)   # atomic; a folder can't replace a non-empty one
            except OSError:
                if not target.exists():
                    raise
                return "hit"             # a sound entry appeared meanwhile (no working lock): it wins
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return f"rebuilt: {why}" if why else "built"


def _remove_orphans(target):
    """Temporary folders of this key whose building process is gone (killed before its rename)."""
    for left in target.parent.glob(f".{target.name}.*-*-*"):
        kind, pid = left.name[len(target.name) + 2:].rsplit("-", 2)[:2]
        if kind in ("tmp", "corrupt") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        pass
    return True


def _share(folder):
    """Every file and folder of a new entry readable as the umask allows (a library may have written a file
    0600): a cache a group shares is readable by all its members."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
