"""The benchmark run's plugins and its cells: every registered suite's grid, parametrized from
experiments/llm_suites.yaml (after option overrides), one suites.Cell per test.

The plugins load here, for `pytest benchmarks` runs only, not for the unit tests.
"""
pytest_plugins = ["fixtures.bench_session", "fixtures.cuda_timer"]


def pytest_generate_tests(metafunc):
    from fixtures.bench_session import CFG_KEY  # here: the plugin is registered (and assert-rewritten) first
    suite = getattr(metafunc.function, "suite", None)
    if suite is not None:
        cells = suite.cells(metafunc.config.stash[CFG_KEY][suite.marker])
        metafunc.parametrize("cell", cells, ids=[c.id for c in cells])
