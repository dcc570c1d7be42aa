"""python -m gcompress_bench.llm_eval --variant {baseline,palu} --suite {ppl,lmeval} --out <dir>"""
import sys

if __name__ == "__main__":
    print("llm_eval: the ppl and lmeval suites are not implemented yet (see the quality-suites issue); "
          "allowed now: python -m gcompress_bench.llm_run --suite infer_sweep", file=sys.stderr)
    sys.exit(2)
