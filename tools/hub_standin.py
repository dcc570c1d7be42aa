#!/usr/bin/env python
"""A stand-in for the Hugging Face Hub on 127.0.0.1, for filling an HF cache with the real clients
where the Hub can't be reached (tests, air-gapped machines).

    python tools/hub_standin.py serve [--port N] [--port-file FILE] [--log FILE]
    python tools/hub_standin.py populate --hf-home DIR [--log FILE]

`populate` starts the server, points HF_ENDPOINT at it, runs tools/fill_hf_cache.py (the same
client calls a user makes on a login node: `snapshot_download` for the model, `load_dataset`
for WikiText-2 and for the datasets the installed lm-eval's piqa/hellaswag YAMLs name), and
stops the server by its PID, on errors too.

What it serves is described in data/hub_standin/manifest.yaml: the embedded SmolLM2 exported
with save_pretrained, and the project's own prose and items shaped like WikiText-2 raw, piqa and
hellaswag (same repos, configs, splits, columns and types; not the same text). It answers the part
of the Hub's HTTP API those clients use: repo info, tree listing, and file resolution (HEAD and GET,
with the commit, ETag and LFS headers). Every request is logged; anything else gets a 404 naming
what was asked, as the Hub answers a file a repo doesn't have.
"""
import argparse
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data" / "hub_standin" / "manifest.yaml"
LFS_MIN_BYTES = 10 * 2**20


@dataclass
class Blob:
    size: int
    oid: str                 # git blob sha1 (of the LFS pointer for an LFS file)
    sha256: str = None       # LFS files only
    data: bytes = None
    path: Path = None

    @classmethod
    def of_bytes(cls, data):
        return cls(len(data), _git_oid(data), data=data)

    @classmethod
    def of_file(cls, path):
        size = path.stat().st_size
        if size < LFS_MIN_BYTES and path.suffix != ".safetensors":
            return cls.of_bytes(path.read_bytes())
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(2**24), b""):
                h.update(chunk)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{h.hexdigest()}\nsize {size}\n"
        return cls(size, _git_oid(pointer.encode()), sha256=h.hexdigest(), path=path)

    def read(self, start, end):
        if self.data is not None:
            return self.data[start:end]
        with self.path.open("rb") as f:
            f.seek(start)
            return f.read(end - start)


def _git_oid(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, kind, repo_id, files, card=None):
        self.kind, self.id, self.files, self.card = kind, repo_id, files, card or {}
        listing = json.dumps(sorted((p, b.oid) for p, b in files.items())).encode()
        self.sha = hashlib.sha1(listing).hexdigest()

    def entries(self, prefix="", recursive=False):
        """Tree entries under a folder, as the Hub lists them (folders first seen, then files)."""
        prefix = prefix.strip("/")
        out, dirs = [], set()
        for path in sorted(self.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(filter(None, [prefix, *parts[:depth]]))
                if d not in dirs and (recursive or depth == 1):
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                "path": d})
            if recursive or len(parts) == 1:
                out.append(self.entry(path))
        return out

    def entry(self, path):
        if path not in self.files:
            d = path.strip("/")
            if any(p.startswith(d + "/") for p in self.files):
                return {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            return None
        b = self.files[path]
        e = {"type": "file", "oid": b.oid, "size": b.size, "path": path}
        if b.sha256:
            e["lfs"] = {"oid": b.sha256, "size": b.size, "pointerSize": 134}
        return e

    def info(self):
        stamp = "2026-01-01T00:00:00.000Z"
        out = {"_id": self.sha[:24], "id": self.id, "author": self.id.split("/")[0] if "/" in self.id else None,
               "sha": self.sha, "lastModified": stamp, "createdAt": stamp, "private": False, "gated": False,
               "disabled": False, "downloads": 0, "likes": 0, "tags": [], "cardData": self.card,
               "siblings": [{"rfilename": p} for p in sorted(self.files)]}
        if self.kind == "model":
            out.update(modelId=self.id, library_name="transformers", pipeline_tag="text-generation")
        return out


# ---------------------------------------------------------------- what is served

def _dataset_card(configs):
    """README.md with the YAML header the datasets library reads: configs, features and split sizes."""
    header = {"configs": [{"config_name": name, "data_files": [{"split": s, "path": path}
                                                                  for s, path in c["paths"].items()]}
                          for name, c in configs.items()],
              "dataset_info": [{"config_name": name, "features": c["features"]._to_yaml_list(),
                                "splits": [{"name": s, "num_bytes": c["bytes"][s], "num_examples": c["rows"][s]}
                                           for s in c["paths"]]}
                               for name, c in configs.items()]}
    text = "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + \
        "Served by gcompress-bench's Hub stand-in: text written for that project, not the original dataset.\n"
    return text.encode(), header


def _rows(spec, path):
    if spec["format"] == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # wikitext raw: one row per line of the file, each keeping its newline; blank lines are empty rows
    return [{"text": line + "\n" if line else ""} for line in path.read_text().splitlines()]


def _dataset_repo(repo_id, spec, root):
    import datasets

    features = datasets.Features._from_yaml_list(spec["features"])
    files, configs = {}, {}
    for config, splits in spec["configs"].items():
        c = configs[config] = {"features": features, "paths": {}, "rows": {}, "bytes": {}}
        folder = config if config != "default" else "data"
        for split, source in splits.items():
            ds = datasets.Dataset.from_list(_rows(spec, root / source), features=features)
            buf = io.BytesIO()
            ds.to_parquet(buf)
            name = f"{folder}/{split}-00000-of-00001.parquet"
            files[name] = Blob.of_bytes(buf.getvalue())
            c["paths"][split], c["rows"][split], c["bytes"][split] = f"{folder}/{split}-*", len(ds), ds.data.nbytes
    card, header = _dataset_card(configs)
    files["README.md"] = Blob.of_bytes(card)
    return Repo("dataset", repo_id, files, header)


def _model_repo(repo_id, folder):
    return Repo("model", repo_id, {p.name: Blob.of_file(p) for p in sorted(Path(folder).iterdir()) if p.is_file()})


def build_repos(manifest=MANIFEST):
    """{(kind, id): Repo} from the manifest."""
    sys.path.insert(0, str(REPO / "src"))
    from gcompress_bench import config as cfgmod
    from gcompress_bench import models
    from gcompress_bench.suites import lmeval

    m = yaml.safe_load(Path(manifest).read_text())
    root = Path(manifest).parent
    repos = {}
    spec = models.resolve(m["model"]["from"], cfgmod.load_suites()["models"])
    repos[("model", m["model"]["repo"])] = _model_repo(m["model"]["repo"], spec.path)
    for ds in m["datasets"]:
        repo_id = ds.get("repo") or lmeval.builtin_dataset(ds["lmeval_task"])[0]
        repos[("dataset", repo_id)] = _dataset_repo(repo_id, ds, root)
    return repos


# ---------------------------------------------------------------- the HTTP side

API = re.compile(r"^/api/(?P<kind>models|datasets)/(?P<rest>.+)$")
RESOLVE = re.compile(r"^/(?:(?P<kind>datasets)/)?(?P<rest>.+)$")


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    repos, log = {}, None

    def log_message(self, fmt, *args):
        if self.log:
            self.log.write(f"{time.strftime('%H:%M:%S')} {fmt % args}\n")
            self.log.flush()

    def _split_repo(self, kind, rest):
        """(repo or None, id as asked, the path after the id); ids are `org/name`."""
        parts = rest.split("/")
        rid = "/".join(parts[:2])
        return self.repos.get((kind, rid)), rid, parts[2:]

    def _send(self, status, body, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj):
        self._send(200, json.dumps(obj).encode())

    def _error(self, status, code, message):
        self.log_message("answered %s %s: %s", status, code, message)
        self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message})

    def _revision(self, repo, rev):
        return unquote(rev) in ("main", repo.sha)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        m = API.match(url.path)
        if m:
            return self._api(m["kind"][:-1], m["rest"], query)
        m = RESOLVE.match(url.path)
        if m and "/resolve/" in m["rest"]:
            return self._resolve(m["kind"][:-1] if m["kind"] else "model", m["rest"])
        self._error(404, "EntryNotFound", f"the stand-in does not serve {self.command} {url.path}")

    def _api(self, kind, rest, query):
        repo, rid, tail = self._split_repo(kind, rest)
        if repo is None:
            return self._error(404, "RepoNotFound", f"{kind} repository {rid} is not served here")
        if not tail or (tail[0] == "revision" and len(tail) >= 2):
            if tail and not self._revision(repo, "/".join(tail[1:])):
                return self._error(404, "RevisionNotFound", f"revision {'/'.join(tail[1:])} of {rid} is not served")
            return self._json(repo.info())
        if tail[0] == "tree" and len(tail) >= 2:
            if not self._revision(repo, tail[1]):
                return self._error(404, "RevisionNotFound", f"revision {tail[1]} of {rid} is not served")
            folder = unquote("/".join(tail[2:]))
            if folder and repo.entry(folder) is None:
                return self._error(404, "EntryNotFound", f"{folder} is not in {rid}")
            return self._json(repo.entries(folder, recursive=query.get("recursive", ["false"])[0] == "true"))
        self._error(404, "EntryNotFound", f"the stand-in does not serve /api/{kind}s/{rid}/{'/'.join(tail)}")

    def _resolve(self, kind, rest):
        repo, rid, tail = self._split_repo(kind, rest)
        if repo is None or len(tail) < 3 or tail[0] != "resolve":
            return self._error(404, "RepoNotFound", f"{kind} repository {rid} is not served here")
        rev, path = unquote(tail[1]), unquote("/".join(tail[2:]))
        if not self._revision(repo, rev):
            return self._error(404, "RevisionNotFound", f"revision {rev} of {rid} is not served")
        blob = repo.files.get(path)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{path} is not in {rid}")
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{blob.sha256 or blob.oid}"'}
        if blob.sha256:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(blob.size))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET":
            for pos in range(0, blob.size, 2**24):
                self.wfile.write(blob.read(pos, min(blob.size, pos + 2**24)))


def serve(port, port_file, log, manifest=MANIFEST):
    Hub.repos = build_repos(manifest)
    Hub.log = open(log, "a") if log else sys.stderr
    server = ThreadingHTTPServer(("127.0.0.1", port), Hub)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    for (kind, rid), repo in sorted(Hub.repos.items()):
        Hub.log.write(f"serving {kind} {rid} @ {repo.sha[:12]}: {', '.join(sorted(repo.files))}\n")
    Hub.log.flush()
    if port_file:
        tmp = Path(f"{port_file}.tmp{os.getpid()}")
        tmp.write_text(str(server.server_address[1]))
        tmp.replace(port_file)
    server.serve_forever()


def populate(hf_home, log, manifest=MANIFEST, timeout=600):
    """Fill HF_HOME through the real clients against a stand-in server started here and stopped by PID."""
    hf_home = Path(hf_home).resolve()
    hf_home.mkdir(parents=True, exist_ok=True)
    port_file = hf_home / f".standin-port-{os.getpid()}"
    server = subprocess.Popen([sys.executable, __file__, "serve", "--port-file", str(port_file),
                               "--manifest", str(manifest), *(["--log", str(log)] if log else [])])
    try:
        end = time.monotonic() + 300
        while not port_file.exists():
            if server.poll() is not None:
                raise SystemExit(f"hub_standin: the server exited with code {server.returncode} before serving")
            if time.monotonic() > end:
                raise SystemExit("hub_standin: the server did not start within 300 s")
            time.sleep(0.2)
        env = {**os.environ, "HF_HOME": str(hf_home), "HF_ENDPOINT": f"http://127.0.0.1:{port_file.read_text()}",
               "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
        model = yaml.safe_load(Path(manifest).read_text())["model"]["repo"]
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "fill_hf_cache.py"), "--model", model],
                              env=env, timeout=timeout)
        if proc.returncode:
            raise SystemExit(f"hub_standin: filling {hf_home} failed (exit {proc.returncode})")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        port_file.unlink(missing_ok=True)
    print(f"hub_standin: {hf_home} holds the model and datasets; use it with HF_HOME={hf_home}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve until SIGTERM")
    s.add_argument("--port", type=int, default=0, help="0 = any free port")
    s.add_argument("--port-file", help="write the port here once serving")
    s.add_argument("--log", help="request log (default: stderr)")
    s.add_argument("--manifest", default=str(MANIFEST), help="what to serve (default: %(default)s)")
    f = sub.add_parser("populate", help="fill an HF cache through the real clients, then stop the server")
    f.add_argument("--hf-home", required=True, help="the HF_HOME to fill")
    f.add_argument("--log", help="the server's request log (default: stderr)")
    f.add_argument("--manifest", default=str(MANIFEST), help="what to serve (default: %(default)s)")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port, args.port_file, args.log, args.manifest)
    elif Path(args.hf_home).exists() and not Path(args.hf_home).is_dir():
        print(f"hub_standin: --hf-home: {args.hf_home!r} is not a folder; allowed: a folder (made if missing)",
              file=sys.stderr)
        sys.exit(2)
    else:
        populate(args.hf_home, args.log, args.manifest)


if __name__ == "__main__":
    main()
