"""Paired comparison of a candidate run with a reference run (a compressed model with its baseline):
is a delta more than noise?"""
from math import comb

from gcompress_bench import UsageError
from gcompress_bench.results.store import ResultsError, load_raw, read_json
from gcompress_bench.suites import lmeval


def mcnemar_exact(base_correct, other_correct):
    """Two-sided exact McNemar test on paired 0/1 outcomes: (only-base, only-other, p-value)."""
    b = sum(1 for x, y in zip(base_correct, other_correct) if x and not y)
    c = sum(1 for x, y in zip(base_correct, other_correct) if y and not x)
    n = b + c
    p = min(1.0, 2 * sum(comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n) if n else 1.0
    return b, c, p


def check_baseline_run(baseline_dir, cfg, suites):
    """A paired comparison is made against a baseline run of the same model, dtype and suite, or not at all."""
    try:
        base = read_json(f"{baseline_dir}/config.json")
    except ResultsError as e:
        raise UsageError(f"--baseline-run: {e}") from None
    differ = [f"it is a {base.get('variant')!r} run"] if base.get("variant") != "baseline" else []
    differ += [f"its {k} is {base.get(k)!r}, this run's {cfg[k]!r}" for k in ("model", "dtype") if base.get(k) != cfg[k]]
    shared = set(base.get("suites", [])) & set(suites) & {"ppl", "lmeval", "longctx"}
    if differ or not shared:
        why = "; ".join(differ) if differ else f"it holds suites {base.get('suites')}, this run {suites}"
        raise UsageError(f"--baseline-run: {baseline_dir} is not a baseline run of this model, dtype and suite "
                         f"({why}); allowed: a baseline run dir of {cfg['model']} ({cfg['dtype']}) with "
                         f"{'/'.join(s for s in suites if s in ('ppl', 'lmeval', 'longctx'))}")


def with_run(baseline_dir, raw):
    return compare_cells(load_raw(baseline_dir)["cells"], raw["cells"])


def compare_cells(base, cells):
    """Per lmeval and longctx cell: accuracy (RULER: score) difference and McNemar over the same items; per
    ppl cell: the ratio. Takes raw cells (they hold the per-item outcomes and window offsets)."""
    out = {}
    for cid, rec in cells.items():
        ref = base.get(cid)
        if rec.get("status") != "ok" or not ref or ref.get("status") != "ok":
            continue
        if rec["suite"] == "ppl":
            same = ref["window_starts"] == rec["window_starts"] and ref["sha256"] == rec["sha256"]
            out[cid] = {"ppl_reference": ref["ppl"], "ppl": rec["ppl"], "ppl_ratio": rec["ppl"] / ref["ppl"],
                        "same_windows": same}
        elif rec["suite"] == "lmeval":
            mine = {i["doc_id"]: i for i in rec["items"]}
            pairs = [(i, mine[i["doc_id"]]) for i in ref["items"] if i["doc_id"] in mine]
            cell = {"n_paired": len(pairs)}
            for metric, outcome in lmeval.metrics(rec).outcome.items():   # the mean of the metric, McNemar
                a = [x[metric] for x, _ in pairs]                         # over the items' 0/1 outcomes
                b = [y[metric] for _, y in pairs]
                only_base, only_other, p = mcnemar_exact([x[outcome] for x, _ in pairs], [y[outcome] for _, y in pairs])
                cell[metric] = {"reference": sum(a) / len(a), "candidate": sum(b) / len(b),
                                "diff": (sum(b) - sum(a)) / len(a), "only_reference_right": only_base,
                                "only_candidate_right": only_other, "mcnemar_p": p}
            if lmeval.metrics(rec) is lmeval.RULER:   # generated documents: the same only if built alike
                cell["same_docs"] = ref["data"]["docs_sha256"] == rec["data"]["docs_sha256"]
            out[cid] = cell
        elif rec["suite"] == "longctx":
            out[cid] = longctx_pair(ref, rec)
    return out


RETRIEVES = 0.5   # a reference below this accuracy retrieves too little for a difference to mean anything


def longctx_pair(ref, rec):
    """The same prompts (item ids, haystack and templates) answered by both runs: accuracy difference and
    McNemar. Where the reference itself mostly fails, the cell is marked: a model that cannot retrieve has
    nothing for compression to lose."""
    mine = {i["id"]: i["correct"] for i in rec["items"]}
    ids = [i["id"] for i in ref["items"] if i["id"] in mine]
    a = [i["correct"] for i in ref["items"] if i["id"] in mine]
    b = [mine[i] for i in ids]
    only_base, only_other, p = mcnemar_exact(a, b)
    same = ref["haystack"]["sha256"] == rec["haystack"]["sha256"] and ref["template"] == rec["template"]
    return {"n_paired": len(ids), "same_prompts": same, "reference": sum(a) / len(a) if a else None,
            "candidate": sum(b) / len(b) if b else None, "diff": (sum(b) - sum(a)) / len(a) if a else None,
            "only_reference_right": only_base, "only_candidate_right": only_other, "mcnemar_p": p,
            "reference_retrieves": bool(a) and sum(a) / len(a) >= RETRIEVES,
            "by_depth": {d: {"reference": ref["by_depth"][d], "candidate": rec["by_depth"].get(d)}
                         for d in ref["by_depth"]}}
