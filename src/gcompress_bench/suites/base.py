"""The suite interface: a suite owns everything about its kind of cell.

A suite declares its marker (the pytest marker and its config section), its job (what `--suite` names),
its options and their defaults, and implements:
  - ids(section) and cost(params): its grid and how long each cell takes (shards balance on it);
  - validate(section): every check of its options that needs no model (raises UsageError);
  - longest(section): the tokens its longest cell needs, checked against the model's context;
  - prepare(run_cfg, spec, tokenizer, device): checks and data that need the model's files, before any
    weights load (its state reaches measure as run.state[marker]);
  - inputs(run_cfg, state): what --check-only reports for it;
  - measure(cell, run, lm, clock, meter): one cell's record;
  - derive(rec, stats), progress(rec): what its summary and its progress line add;
  - markdown(summary, rows): its tables in a run summary;
  - pair(ref, rec), paired_lines(...): a candidate's cell against the baseline's same cell, and its words;
  - compare_rows, compare_markdown, compare_plots: its rows, tables and figures in a comparison of columns;
  - settings: the config keys two runs must share to be compared.
Declarations import no torch: a run imports a suite's measuring code only when it runs its cells.
"""
from dataclasses import dataclass

from gcompress_bench import UsageError
from gcompress_bench.suites import tables

ITER_KEYS = ("warmup", "iters", "trials")


@dataclass(frozen=True)
class Cell:
    """One cell as it travels from the grid to raw.json: pytest parametrizes with it and the record
    is built from it, so nothing downstream re-derives parameters from a test id."""
    suite: str
    id: str
    params: dict
    cost: int


QUALITY_COST = 10 ** 6   # a quality cell outweighs any timing cell: shards get them first, spread out


class Suite:
    marker = None            # the pytest marker, and the config section of its grid
    job = None               # what a run names (--suite): several suites may form one job
    description = ""
    options = ()             # (flag, config path, kind, help) rows of the run's one option table
    defaults = {}            # its config section's defaults, under the YAML (a plug-in's own)
    grid = ()                # section keys whose values span the grid (lists of positive integers)
    timed = False            # its cells are timed: warm-up / iteration / trial counts, a clock
    headline = None          # timed: the samples_ms metric of its progress line
    measured = None          # timed: the samples_ms metric that adds up to its measured regions (default headline)
    needs_model = True       # loads the model under test (and its compression)
    needs_weights = False    # its numbers mean something only with pretrained weights (quality)
    device_facts = False     # its run measures the device's ceilings, launch rate and energy at start
    opt_in = False           # runs only when -m names its marker: a long sweep no default run should start
    settings = ()            # config keys two runs must share to be compared (comparison columns)
    compare_keys = ()        # record fields a comparison shows per side (quality suites)
    joules = None            # timed: the energy field a comparison shows (joules_per_forward, joules_per_token)

    def ids(self, section):
        """[(cell id, params)] in the YAML's order."""
        raise NotImplementedError

    def cost(self, params):
        return QUALITY_COST

    def cells(self, section):
        return [Cell(self.marker, cid, params, self.cost(params)) for cid, params in self.ids(section)]

    def validate(self, section):
        """The grid keys as lists of positive integers, and a timed suite's iteration counts."""
        for key in self.grid:
            vals = section[key]
            if not vals or any(not isinstance(v, int) or v <= 0 for v in vals):
                flag = f"--{self.marker}-{key.replace('_', '-')}"
                raise UsageError(f"{flag}: {vals} is not allowed; values must be positive integers")
        if self.timed:
            for key, low in zip(ITER_KEYS, (0, 1, 1)):
                v = section[key]
                if not isinstance(v, int) or v < low:
                    raise UsageError(f"--{key} ({self.marker}): {v!r} is not allowed; it must be an integer >= {low}")

    def longest(self, section):
        """{what (the options that set it): tokens} of its longest cell."""
        return {}

    def prepare(self, cfg, spec, tokenizer, device):
        return None

    def inputs(self, cfg, state):
        """--check-only lines; a line containing FALLBACK is reported as one."""
        return []

    def measure(self, cell, run, lm, clock, meter):
        raise NotImplementedError

    def derive(self, rec, stats):
        return {}

    def against_ceilings(self, summary, ceilings):
        """A timed cell's summary against the device's ceilings (measure.roofline): {"roofline": ..., ...}."""
        return {"roofline": None}

    def progress(self, rec):
        """What an ok cell's progress line adds after its status."""
        return ""

    def markdown(self, summary, rows):
        """Its tables in run_summary.md; rows = [(cell id, cell summary)] of its cells."""
        return []

    def write(self, summary, raw_cells, run_dir):
        """Its files beside a run's summary (plots under plots/, tables); returns the plots' names."""
        return []

    # A comparison (results/comparison.py): a reference column (baseline runs) against candidate columns. A side
    # is one column's merged runs: {"label", "cells" (cell summaries), "raw" (raw cells), ...}.
    def pair(self, ref, rec):
        """A candidate's raw cell against the reference's same cell, both ok: its paired test, or None."""
        return None

    def paired_lines(self, cid, p, name):
        """A run summary's lines for one of its paired cells (--baseline-run); name: the candidate's method."""
        return []

    def compare_rows(self, ref, cands, pairs):
        """Its rows: per cell, each side's compare_keys (or why missing) and each candidate's paired test;
        pairs = {label: {cell id: pair()}}."""
        return tables.quality_rows(self.marker, ref, cands, pairs, self.compare_keys) if self.compare_keys else []

    def headline_items(self, rows, label):
        """A candidate's lines ("- what: result") in the headline block a comparison opens with."""
        return []

    def compare_markdown(self, rows, ref, labels):
        keys = self.compare_keys
        return tables.compare_table(f"{self.marker} ({self.description})", ["cell"] + [f"{side} {k}" for side in [ref, *labels]
                                                                              for k in keys],
                           [[r["cell"]] + [tables.value(r["values"][side], k, str) for side in [ref, *labels]
                                           for k in keys] for r in rows])

    def compare_plots(self, rows, sides, out, model):
        """Its figures in a comparison's folder `out`; returns their file names."""
        return []
