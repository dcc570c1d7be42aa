import numpy as np
import pytest

from gcompress_bench.results import stats


@pytest.mark.parametrize("n", [1, 2, 7, 30, 101, 1000])
def test_describe_matches_numpy(n):
    rng = np.random.default_rng(n)
    trials = [list(rng.lognormal(1.0, 0.5, n)) for _ in range(3)]
    flat = np.concatenate(trials)
    s = stats.describe(trials)
    for q in (10, 50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(flat, q), rel=1e-12)
    assert s["mean"] == pytest.approx(flat.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(flat.std(ddof=1), rel=1e-9)
    assert s["cv"] == pytest.approx(flat.std(ddof=1) / flat.mean(), rel=1e-9)
    assert (s["min"], s["max"], s["n"]) == (flat.min(), flat.max(), 3 * n)
    assert s["trial_medians"] == pytest.approx([np.median(t) for t in trials], rel=1e-12)


def test_single_sample_has_zero_spread():
    s = stats.describe([[4.0]])
    assert (s["p50"], s["p99"], s["std"], s["cv"]) == (4.0, 4.0, 0.0, 0.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_speedups_interval_with_one_trial_a_side_is_scipys_percentile_bootstrap(seed):
    from scipy.stats import bootstrap
    rng = np.random.default_rng(seed)
    ref, cand = rng.lognormal(0, 0.2, 40) * 10, rng.lognormal(0, 0.2, 30) * 8
    mine = stats.ratio_interval([list(ref)], [list(cand)], resamples=20000)
    theirs = bootstrap((ref, cand), lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis),
                       vectorized=True, paired=False, method="percentile", n_resamples=20000,
                       random_state=seed).confidence_interval
    assert mine == pytest.approx((theirs.low, theirs.high), rel=0.01)   # two Monte Carlo estimates of one interval
    assert mine[0] < np.median(ref) / np.median(cand) < mine[1] and not stats.holds_one(mine)


def test_drift_between_trials_widens_the_interval_and_equal_sides_hold_one():
    rng = np.random.default_rng(3)
    steady = [list(rng.normal(10, 0.2, 50)) for _ in range(3)]
    drifting = [list(rng.normal(10 + shift, 0.2, 50)) for shift in (-1, 0, 1)]   # the same spread within a trial
    pooled = [[x for t in drifting for x in t]]
    lo, hi = stats.ratio_interval(steady, drifting)
    plo, phi = stats.ratio_interval(steady, pooled)
    assert hi - lo > 2 * (phi - plo)   # resampled by trial, the drift counts; pooled, it hides
    assert stats.holds_one((lo, hi)) and stats.holds_one(stats.ratio_interval(steady, steady))
    assert stats.ratio_interval(steady, drifting) == (lo, hi)   # seeded: a report is reproducible


def test_paired_intervals_of_a_perplexity_ratio_and_an_accuracy_difference_are_scipys():
    """Windows (perplexity) and items (accuracy) are resampled in pairs, as scipy's paired bootstrap does."""
    from scipy.stats import bootstrap
    rng = np.random.default_rng(4)
    tokens = rng.integers(200, 256, 12).astype(float)
    ref = tokens * rng.normal(3.0, 0.1, 12)
    cand = ref + tokens * rng.normal(0.05, 0.02, 12)   # about 5% worse per token, window by window
    ratio = lambda r, c, t, axis: np.exp((c.sum(axis) - r.sum(axis)) / t.sum(axis))  # noqa: E731
    theirs = bootstrap((ref, cand, tokens), ratio, paired=True, vectorized=True, method="percentile",
                       n_resamples=20000, random_state=0).confidence_interval
    mine = stats.ppl_ratio_interval(ref, cand, tokens, resamples=20000)
    assert mine == pytest.approx((theirs.low, theirs.high), rel=0.005) and mine[0] > 1
    a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    theirs = bootstrap((a, b), lambda x, y, axis: (y - x).mean(axis), paired=True, vectorized=True,
                       method="percentile", n_resamples=20000, random_state=0).confidence_interval
    assert stats.paired_diff_interval(a, b, resamples=20000) == pytest.approx((theirs.low, theirs.high), abs=0.01)
