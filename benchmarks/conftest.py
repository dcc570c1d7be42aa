"""The suite's cells: parametrized from experiments/llm_suites.yaml (after option overrides), one
suites.Cell per test, which carries its parameters to the record."""
from fixtures.bench_session import CFG_KEY
from gcompress_bench.suites import SUITES


def pytest_generate_tests(metafunc):
    for marker, suite in SUITES.items():
        if f"{marker}_cell" in metafunc.fixturenames:
            cells = suite.cells(metafunc.config.stash[CFG_KEY][marker])
            metafunc.parametrize(f"{marker}_cell", cells, ids=[c.id for c in cells])
