"""A reference (the baseline) against any number of candidates: reports/<exp_group>/report.md,
report.json and PNGs from run dirs.

    python tools/plot_llm_results.py --reference RUN [RUN ...] --candidate palu=RUN [RUN ...] \\
        [--candidate "palu latent=RUN ..."] [--out reports/G]
    python tools/plot_llm_results.py --exp-group G [--results-root results]

A column may hold several run dirs of one setting (its infer_sweep, ppl and lmeval runs, or the shards
of one). With --exp-group, the baseline runs are the reference and the other runs are grouped into
candidates by method and method options, each labelled by them (e.g. `palu cache=latent`).
"""
import sys

from gcompress_bench.cli import compare

if __name__ == "__main__":
    sys.exit(compare(sys.argv[1:], prog="plot_llm_results"))
