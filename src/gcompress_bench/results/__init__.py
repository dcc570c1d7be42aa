"""Results: run dirs and storage, statistics, paired tests, summaries, comparisons, plots."""
