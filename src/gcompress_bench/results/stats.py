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
        "p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99),
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
