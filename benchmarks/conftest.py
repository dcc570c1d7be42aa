"""The suite's cells: parametrized from experiments/llm_suites.yaml (after option overrides)."""
from fixtures.bench_session import CFG_KEY
from gcompress_bench.config import grid_cells


def pytest_generate_tests(metafunc):
    for suite in ("prefill", "decode", "ppl", "lmeval"):
        if f"{suite}_cell" in metafunc.fixturenames:
            ids, cells = zip(*grid_cells(metafunc.config.stash[CFG_KEY], suite))
            metafunc.parametrize(f"{suite}_cell", cells, ids=ids)
