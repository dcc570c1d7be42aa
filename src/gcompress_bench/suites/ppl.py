"""Perplexity over fixed token windows (the same windows for every variant)."""
import hashlib
import math
import os
import time

from gcompress_bench import UsageError
from gcompress_bench.corpus import check_corpus, load_corpus
from gcompress_bench.results.stats import holds_one, ppl_ratio_interval
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import compare_table, dash_unless_ok, table, value


def windows(n_tokens, seq_len, stride=None):
    """(begin, end, first scored position) per window; a stride < seq_len gives sliding windows whose
    overlap is context only, so every token is scored exactly once."""
    stride = stride or seq_len
    out, scored_to = [], 0
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + seq_len, n_tokens)
        if end - begin < 2:
            break
        out.append((begin, end, max(scored_to, begin + 1) - begin))
        scored_to = end
        if end == n_tokens:
            break
    return out


def perplexity(model, ids, seq_len, stride=None):
    """exp(mean NLL) of ids[1:] given their prefixes within each window."""
    import torch
    nll, count, per_window = 0.0, 0, []
    device = next(model.parameters()).device
    spans = windows(len(ids), seq_len, stride)
    with torch.inference_mode():
        for begin, end, first in spans:
            chunk = ids[begin:end][None].to(device)
            logits = model(input_ids=chunk, use_cache=False).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")
            per_window.append((losses[first - 1:].double().sum().item(), len(losses) - (first - 1)))
            nll += per_window[-1][0]
            count += per_window[-1][1]
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "windows": len(spans),
            "window_starts": [b for b, _, _ in spans], "window_nll": [w for w, _ in per_window],
            "window_tokens": [n for _, n in per_window]}


def evaluate(lm, corpus, seq_len, stride):
    """The ppl cell: same text, same tokenizer, same windows for every variant."""
    text, source = load_corpus(corpus)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
    t0 = time.perf_counter()
    out = perplexity(lm.model, ids, seq_len, stride)
    return {**out, "dataset": source, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "seq_len": seq_len, "stride": stride, "seconds": time.perf_counter() - t0}


def _ratio(p):
    ci = p.get("ppl_ratio_ci")
    return (f"{p['ppl_ratio']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else " [no interval]") +
            (" no measurable difference" if ci and holds_one(ci) else "") +
            f" ({'same' if p['same_windows'] else 'DIFFERENT'} windows)")


class Ppl(Suite):
    marker = job = "ppl"
    description = "perplexity over fixed token windows"
    options = (("--ppl-corpus", "ppl.corpus", "str", "ppl: auto (WikiText-2 test if cached, else data/tiny_corpus.txt) "
                                                    "or a text file"),
               ("--ppl-seq-len", "ppl.seq_len", "int", "ppl: tokens per window"),
               ("--ppl-stride", "ppl.stride", "int", "ppl: window stride (< seq len: sliding windows)"))
    needs_weights = True
    settings = ("ppl.corpus", "ppl.seq_len", "ppl.stride")
    compare_keys = ("ppl", "nll", "tokens", "windows", "dataset")

    def ids(self, g):
        return [(f"S{g['seq_len']}" + (f"-stride{g['stride']}" if g["stride"] else ""), dict(g))]

    def validate(self, g):
        if g["seq_len"] < 2 or (g["stride"] is not None and not 1 <= g["stride"] <= g["seq_len"]):
            raise UsageError(f"--ppl-seq-len/--ppl-stride: {g['seq_len']}/{g['stride']} is not allowed; "
                             "seq len >= 2 and 1 <= stride <= seq len")
        if g["corpus"] not in ("auto", "wikitext2") and not os.path.isfile(g["corpus"]):
            raise UsageError(f"--ppl-corpus: {g['corpus']!r} is not a file; allowed: auto, wikitext2, or a text file")

    def longest(self, g):
        return {"--ppl-seq-len": g["seq_len"]}

    def prepare(self, cfg, spec, tokenizer, device):
        check_corpus(cfg["ppl"]["corpus"], tokenizer, cfg["ppl"]["seq_len"])

    def inputs(self, cfg, state):
        return [f"ppl corpus: {load_corpus(cfg['ppl']['corpus'])[1]}"]

    def measure(self, cell, run, lm, clock, meter):
        from gcompress_bench.measure.cell import run_cell
        return run_cell(evaluate, lm.device, lm=lm, corpus=cell.params["corpus"], seq_len=cell.params["seq_len"],
                        stride=cell.params["stride"])

    def progress(self, rec):
        return f" ppl {rec['ppl']:.3f} over {rec['tokens']} tokens ({rec['dataset']})"

    def pair(self, ref, rec):
        """The candidate's perplexity over the reference's, comparable only over the same text and windows, with
        its 95% interval from the windows resampled in pairs (runs that predate per-window NLLs have none)."""
        same = ref["window_starts"] == rec["window_starts"] and ref["sha256"] == rec["sha256"]
        ci = (ppl_ratio_interval(ref["window_nll"], rec["window_nll"], ref["window_tokens"])
              if same and "window_nll" in ref and "window_nll" in rec else None)
        return {"ppl_reference": ref["ppl"], "ppl": rec["ppl"], "ppl_ratio": rec["ppl"] / ref["ppl"],
                "ppl_ratio_ci": ci, "same_windows": same}

    def paired_lines(self, cid, p, name):
        return [f"- {cid}: perplexity {p['ppl']:.4f} vs {p['ppl_reference']:.4f}, ratio {_ratio(p)}"]

    def headline_items(self, rows, label):
        out = []
        for r in rows:
            p = r["paired"].get(label)
            if not p:
                continue
            ci = p["ppl_ratio_ci"]
            pct = (f" [{100 * (ci[0] - 1):+.2f}%, {100 * (ci[1] - 1):+.2f}%]" + (" no measurable difference"
                                                                                 if holds_one(ci) else "")
                   if ci else " (no interval: " + ("runs without per-window NLLs)" if p["same_windows"] else
                                                    "DIFFERENT windows: not comparable)"))
            out.append(f"- perplexity {r['cell']}: {p['ppl_reference']:.3f} -> {p['ppl']:.3f}, "
                       f"{100 * (p['ppl_ratio'] - 1):+.2f}%{pct}")
        return out

    def compare_markdown(self, rows, ref, labels):
        f4 = "{:.4f}".format

        def ratio(p):
            return _ratio(p) if p else "—"
        return compare_table("perplexity (ratio = candidate / reference over the reference's windows, [its 95% "
                             "bootstrap interval over windows, paired]; \"no measurable difference\" where it "
                             "holds 1.0)",
                    ["cell", ref] + [h for label in labels for h in (label, "ratio")] + ["dataset"],
                    [[r["cell"], value(r["values"][ref], "ppl", f4)] +
                     [x for label in labels for x in (value(r["values"][label], "ppl", f4), ratio(r["paired"][label]))]
                     + [str(next((v["dataset"] for v in r["values"].values() if "dataset" in v), "—"))] for r in rows])

    def compare_plots(self, rows, sides, out, model):
        from gcompress_bench.results import plots
        return [plots.save(plots.grouped_bars([r["cell"] for r in rows],
                                              {s["label"]: [r["values"][s["label"]].get("ppl") for r in rows]
                                               for s in sides}, "perplexity (lower is better)", "perplexity"),
                           out / "ppl.png")]

    def markdown(self, s, rows):
        return table("ppl", ["perplexity", "mean NLL", "tokens", "windows", "dataset", "sha256", "s"], rows,
                     dash_unless_ok(7, lambda c: [f"{c['ppl']:.4f}", f"{c['nll']:.4f}", str(c["tokens"]),
                                                  str(c["windows"]), c["dataset"], c["sha256"][:12],
                                                  f"{c['seconds']:.1f}"]))


register(Ppl())
