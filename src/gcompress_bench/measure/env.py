"""The environment a result was measured in, recorded next to it (env.json)."""
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time

import torch

from gcompress_bench import REPO_ROOT

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME",
              "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_CPUS_PER_TASK")


def _version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd, cwd=None):
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def capture(argv, seed):
    cuda = torch.cuda.is_available()
    status = _run(["git", "status", "--porcelain"], cwd=REPO_ROOT)
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval"),
        "datasets": _version("datasets"),
        "host": socket.gethostname(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
        "git_commit": _run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT),
        "git_dirty": bool(status) if status is not None else None,
        "command": argv,
        "seed": seed,
        "hf_offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")},
        "gcompress_cache": os.environ.get("GCOMPRESS_CACHE"),
    }
