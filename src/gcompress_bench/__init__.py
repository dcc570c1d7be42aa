"""gcompress-bench: measures what KV-cache compression (PaLU) buys an LLM."""
import os
from pathlib import Path

# The suite never downloads: without these, a missing dataset makes the HF libraries retry for ~23 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("baseline", "palu")


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""
