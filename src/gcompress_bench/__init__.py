"""gcompress-bench: measures what compressing an LLM (PaLU, ASVD, ...) really buys on a GPU."""
import os
from pathlib import Path

# The suite never downloads: without these, a missing dataset makes the HF libraries retry the network first.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[2]


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""
