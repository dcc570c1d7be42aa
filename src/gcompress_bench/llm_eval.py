"""python -m gcompress_bench.llm_eval --variant {baseline,METHOD} --suite {ppl,lmeval,longctx} --tasks piqa,hellaswag --limit 200 --out <dir>"""
import sys

from gcompress_bench.cli import run

SUITES, DEFAULT = ["ppl", "lmeval", "longctx"], "ppl"

if __name__ == "__main__":
    sys.exit(run("llm_eval", SUITES, DEFAULT))
