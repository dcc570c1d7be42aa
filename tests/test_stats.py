import numpy as np
import pytest

from gcompress_bench.results import stats


@pytest.mark.parametrize("n", [1, 2, 7, 30, 101, 1000])
def test_describe_matches_numpy(n):
    rng = np.random.default_rng(n)
    trials = [list(rng.lognormal(1.0, 0.5, n)) for _ in range(3)]
    flat = np.concatenate(trials)
    s = stats.describe(trials)
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(flat, q), rel=1e-12)
    assert s["mean"] == pytest.approx(flat.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(flat.std(ddof=1), rel=1e-9)
    assert s["cv"] == pytest.approx(flat.std(ddof=1) / flat.mean(), rel=1e-9)
    assert (s["min"], s["max"], s["n"]) == (flat.min(), flat.max(), 3 * n)
    assert s["trial_medians"] == pytest.approx([np.median(t) for t in trials], rel=1e-12)


def test_single_sample_has_zero_spread():
    s = stats.describe([[4.0]])
    assert (s["p50"], s["p99"], s["std"], s["cv"]) == (4.0, 4.0, 0.0, 0.0)
