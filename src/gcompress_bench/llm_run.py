"""python -m gcompress_bench.llm_run --variant {baseline,METHOD} --suite infer_sweep --out <dir>"""
import sys

from gcompress_bench.cli import run

SUITES, DEFAULT = ["infer_sweep"], "infer_sweep"

if __name__ == "__main__":
    sys.exit(run("llm_run", SUITES, DEFAULT))
