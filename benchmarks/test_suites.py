"""One test function per registered suite (test_prefill, test_decode, test_ppl, ...), marked with the suite's
marker and parametrized over its cells; the suite measures, the plugin records."""
import pytest

from gcompress_bench.suites import SUITES


def _test_of(suite):
    def test(cell, bench_run, bench_record, request):
        lm = request.getfixturevalue("bench_model") if suite.needs_model else None
        clock = request.getfixturevalue("bench_clock") if suite.timed else None
        bench_record(cell, suite.measure(cell, bench_run, lm, clock, bench_run.meter))
    test.suite = suite
    test.__doc__ = suite.description
    return getattr(pytest.mark, suite.marker)(test)


for _suite in SUITES.values():
    globals()[f"test_{_suite.marker}"] = _test_of(_suite)
