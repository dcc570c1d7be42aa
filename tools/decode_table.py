"""One markdown table of the decode cells of several runs (e.g. baseline, palu full, palu latent),
row by row per (B, ctx, gen, mode), so paths are compared within one decode mode.

    python tools/decode_table.py docs/h200/long/baseline docs/h200/long/palu docs/h200/long/latent
"""
import re
import sys

from gcompress_bench.report import build_summary
from gcompress_bench.results import ResultsError, read_json


def _path(run):
    cfg = read_json(f"{run}/config.json")
    return cfg["variant"] + (f" {cfg['palu'].get('cache', 'full')}" if cfg["variant"] == "palu" else "")


def rows(runs):
    out = []
    for run in runs:
        name, s = _path(run), build_summary(run)
        for cid, c in s["cells"].items():
            if c.get("suite") != "decode":
                continue
            p = c["params"]
            key = (p.get("mode", "eager"), p["batch"], p["ctx"], p["gen"])
            if c["status"] != "ok":
                out.append((key, name, [f"{c['status']}: {c.get('reason', '')}"] + ["—"] * 5))
                continue
            st, r, mem = c["stats_ms"]["step"], c["roofline"] or {}, c["memory"]
            peak = mem.get("peak_allocated_bytes")
            out.append((key, name, [f"{st['p50']:.2f}", f"{st['p90']:.2f}", f"{c['kv_cache_bytes'] / 2**20:.0f}",
                                    f"{peak / 2**30:.2f}" if peak is not None else "n/a",
                                    f"{r['GBps']:.0f}" if r else "n/a", str(r.get("pct_of_copy", "n/a"))]))
        for cid in s["not_run"]:
            m = re.fullmatch(r"test_decode\[B(\d+)-ctx(\d+)-gen(\d+)(?:-(\w+))?\]", cid)
            if m:
                key = (m.group(4) or "eager",) + tuple(int(g) for g in m.groups()[:3])
                out.append((key, name, ["not run (run interrupted)"] + ["—"] * 5))
    return sorted(out, key=lambda x: x[0] + (x[1],))


def main(runs):
    if not runs:
        print("usage: python tools/decode_table.py RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    try:
        table = rows(runs)
    except ResultsError as e:
        print(f"decode_table: {e}", file=sys.stderr)
        return 2
    print("| mode | B | ctx | gen | path | ms/token p50 | p90 | KV cache MiB | peak alloc GiB | GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (mode, b, ctx, gen), name, cols in table:
        print(f"| {mode} | {b} | {ctx} | {gen} | {name} | " + " | ".join(cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
