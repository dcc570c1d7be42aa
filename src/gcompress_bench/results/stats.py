"""Distribution statistics of timing samples (ms), and the exact test of paired 0/1 outcomes."""
import math


def percentile(sorted_xs, q):
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def describe(trials):
    """Stats over all samples of all trials, plus each trial's median to expose drift between trials."""
    xs = sorted(x for t in trials for x in t)
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {
        "n": n, "mean": mean, "std": std,
        "p10": percentile(xs, 10), "p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99),
        "min": xs[0], "max": xs[-1], "cv": std / mean if mean else 0.0,
        "trial_medians": [percentile(sorted(t), 50) for t in trials],
    }


def mcnemar_exact(base_correct, other_correct):
    """Two-sided exact McNemar test on paired 0/1 outcomes: (only-base, only-other, p-value)."""
    b = sum(1 for x, y in zip(base_correct, other_correct) if x and not y)
    c = sum(1 for x, y in zip(base_correct, other_correct) if y and not x)
    n = b + c
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n) if n else 1.0
    return b, c, p


def ratio_interval(ref_trials, cand_trials, level=0.95, resamples=2000, seed=0):
    """The percentile bootstrap interval of p50(ref) / p50(cand), a speedup. Each replicate resamples a side as
    its samples were taken: its trials with replacement, then the samples within each trial drawn, so drift
    between trials widens the interval; with one trial a side it is the ordinary two-sample bootstrap (tested
    against scipy's). Seeded, so a report is reproducible."""
    import numpy as np
    rng = np.random.default_rng(seed)

    def medians(trials):
        if len({len(t) for t in trials}) > 1:   # unequal trials: resampled as one
            trials = [[x for t in trials for x in t]]
        t = np.asarray(trials, dtype=float)
        k, n = t.shape
        out, step = [], max(1, 2_000_000 // (k * n))   # resamples per batch: bounded memory for long decodes
        for start in range(0, resamples, step):
            r = min(step, resamples - start)
            picked = t[rng.integers(0, k, (r, k))]
            drawn = np.take_along_axis(picked, rng.integers(0, n, (r, k, n)), 2)
            out.append(np.median(drawn.reshape(r, k * n), axis=1))
        return np.concatenate(out)
    return _percentile_interval(medians(ref_trials) / medians(cand_trials), level)


def _percentile_interval(replicates, level):
    """The central `level` share of a bootstrap's replicates."""
    import numpy as np
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def holds_one(interval):
    """Whether a ratio's interval holds 1.0: no measurable difference."""
    return interval[0] <= 1.0 <= interval[1]


def ppl_ratio_interval(ref_nll, cand_nll, tokens, level=0.95, resamples=2000, seed=0):
    """The percentile bootstrap interval of a perplexity ratio, candidate / reference, over windows paired on
    the same text: each replicate draws windows with replacement, the same ones for both sides, and compares
    exp(NLL per token) over them. `*_nll` are each window's summed NLL, `tokens` its scored tokens."""
    import numpy as np
    rng = np.random.default_rng(seed)
    ref, cand, tok = (np.asarray(v, dtype=float) for v in (ref_nll, cand_nll, tokens))
    idx = rng.integers(0, len(tok), (resamples, len(tok)))
    return _percentile_interval(np.exp((cand[idx].sum(1) - ref[idx].sum(1)) / tok[idx].sum(1)), level)


def paired_diff_interval(ref, cand, level=0.95, resamples=2000, seed=0):
    """The percentile bootstrap interval of mean(cand - ref) over paired items (accuracy in points, as a
    fraction): each replicate draws items with replacement, the same ones for both sides."""
    import numpy as np
    rng = np.random.default_rng(seed)
    d = np.asarray(cand, dtype=float) - np.asarray(ref, dtype=float)
    return _percentile_interval(d[rng.integers(0, len(d), (resamples, len(d)))].mean(1), level)
