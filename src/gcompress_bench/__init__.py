"""gcompress-bench: measures what KV-cache compression (PaLU) buys an LLM."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("baseline", "palu")


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""
