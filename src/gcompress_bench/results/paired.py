"""Paired comparison of a candidate run with a reference run (a compressed model with its baseline):
is a delta more than noise?"""
from gcompress_bench import UsageError
from gcompress_bench.results.store import ResultsError, load_raw, read_json
from gcompress_bench.suites import SUITES, Suite


def paired_jobs():
    """The jobs whose cells pair with a baseline's (their suite implements pair)."""
    return {s.job for s in SUITES.values() if type(s).pair is not Suite.pair}


def check_baseline_run(baseline_dir, cfg, suites):
    """A paired comparison is made against a baseline run of the same model, dtype and suite, or not at all."""
    try:
        base = read_json(f"{baseline_dir}/config.json")
    except ResultsError as e:
        raise UsageError(f"--baseline-run: {e}") from None
    differ = [f"it is a {base.get('variant')!r} run"] if base.get("variant") != "baseline" else []
    differ += [f"its {k} is {base.get(k)!r}, this run's {cfg[k]!r}" for k in ("model", "dtype") if base.get(k) != cfg[k]]
    pairing = paired_jobs()
    shared = set(base.get("suites", [])) & set(suites) & pairing
    if differ or not shared:
        why = "; ".join(differ) if differ else f"it holds suites {base.get('suites')}, this run {suites}"
        raise UsageError(f"--baseline-run: {baseline_dir} is not a baseline run of this model, dtype and suite "
                         f"({why}); allowed: a baseline run dir of {cfg['model']} ({cfg['dtype']}) with "
                         f"{'/'.join(s for s in suites if s in pairing)}")


def with_run(baseline_dir, raw):
    return compare_cells(load_raw(baseline_dir)["cells"], raw["cells"])


def compare_cells(base, cells):
    """Per cell that both runs finished: its suite's paired test (suites' pair: a perplexity ratio, accuracy
    differences with McNemar). Takes raw cells (they hold the per-item outcomes and window offsets)."""
    out = {}
    for cid, rec in cells.items():
        ref = base.get(cid)
        if rec.get("status") != "ok" or not ref or ref.get("status") != "ok" or rec.get("suite") not in SUITES:
            continue
        paired = SUITES[rec["suite"]].pair(ref, rec)
        if paired is not None:
            out[cid] = paired
    return out
