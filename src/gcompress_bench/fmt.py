"""How numbers read in summaries, method facts and comparisons (a leaf: methods format their facts
without importing the reporting stack)."""

NOT_AVAILABLE = "not available"   # a measured field this run could not measure (e.g. no energy counter)


def fmt_mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def num(value, digits=4):
    """A number as a report shows it; a non-finite one is stored as null."""
    return "not finite" if value is None else f"{value:.{digits}f}"


def plus_minus(value, stderr, digits=4):
    """value ± stderr; lm-eval gives no stderr for a single item."""
    return f"{value:.{digits}f} ± " + (f"{stderr:.{digits}f}" if stderr is not None else "n/a")
