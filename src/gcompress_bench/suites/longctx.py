"""Long-context retrieval: does a compressed model still find a fact far back in its context?

Perplexity over short windows barely sees a KV cache that blurs old positions; a key hidden at a
controlled depth of a long prompt does. Three tasks after RULER (passkey, multi-key needle, variable
tracking) are described as data in data/longctx/tasks.yaml. The haystack is the project's own prose,
so nothing is downloaded; every prompt is exactly `length` tokens of the model's tokenizer and ends
where the answer is the natural continuation, so a greedy continuation is scored by exact match.
"""
import hashlib
import itertools
import random
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from gcompress_bench import REPO_ROOT, UsageError
from gcompress_bench.corpus import read_text_file
from gcompress_bench.results.stats import mcnemar_exact
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import compare_table, dash_unless_ok, save_plot, table, value

TASKS = REPO_ROOT / "data" / "longctx" / "tasks.yaml"


@dataclass
class Task:
    name: str
    intro: str
    needle: str           # a chain's first needle: {name}, {key}
    question: str         # ends where the answer is the continuation: {name} of the asked chain's last needle
    digits: int           # of a key
    hop: str = None       # a chain's later needles: {name}, {prev}
    hops: int = 1
    chains: int = 1       # the asked one and distractors
    names: list = None    # words a chain is named by, or
    letters: int = 0      # random capitals


def load_tasks(path=TASKS):
    data = yaml.safe_load(Path(path).read_text())
    return {name: Task(name, data["intro"], **spec) for name, spec in data["tasks"].items()}


FENCE = "```"
LIST_ITEM = re.compile(r"([-*+]|\d+\.)\s+")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _mostly_symbols(s):
    return sum(c.isalnum() or c.isspace() for c in s) < 0.8 * len(s)


def _sentences(markdown):
    """The prose of a markdown file: code blocks, tables and headings go, and so do sentences mostly of
    symbols (a model reading them sees noise, not text); links keep their words, and a paragraph or list
    item ends a sentence, so a needle placed between sentences never splits one."""
    paras, cur, fenced = [], [], False
    for line in markdown.splitlines():
        s = line.strip()
        fenced ^= s.startswith(FENCE)
        item = LIST_ITEM.match(s)
        keep = bool(s) and not fenced and not s.startswith((FENCE, "|", "#"))
        if item or not keep:
            paras.append(" ".join(cur))
            cur = []
        if keep:
            cur.append(s[item.end():] if item else s)
    paras.append(" ".join(cur))
    prose = [LINK.sub(r"\1", p).replace("`", "").replace("*", "") for p in paras]
    return [s for p in prose for s in SENTENCE_END.split(p) if s and not _mostly_symbols(s)]


def haystack(paths=None):
    """(text, sha256): one sentence a line, from the files tasks.yaml names: a text file's lines as they are,
    a markdown file's prose. The default is data/longctx/haystack.txt, the prose of the project's own docs
    taken once, so that editing the docs never changes the prompts a baseline run answered. build_items
    repeats it from the start when a prompt needs more text than there is."""
    paths = paths or yaml.safe_load(TASKS.read_text())["haystack"]
    allowed = "markdown or text files with prose"
    sentences = []
    for p in paths:
        text = read_text_file("longctx haystack", str(REPO_ROOT / p), allowed)
        sentences += _sentences(text) if str(p).endswith(".md") else [s for s in text.splitlines() if s.strip()]
    if not sentences:
        raise UsageError(f"longctx haystack: {', '.join(map(str, paths))} hold no prose; allowed: {allowed}")
    text = "\n".join(sentences)
    return text, hashlib.sha256(text.encode()).hexdigest()


def _draw(make, taken, hay):
    """A fresh value that occurs neither in the item so far nor in the haystack: one answer, unambiguous."""
    while (value := make()) in taken or value in hay:
        pass
    taken.add(value)
    return value


def _chains(task, rng, hay):
    """[(names, key, needle texts)] per chain, the asked one first."""
    taken = set()
    words = iter(rng.sample(task.names, task.chains * task.hops)) if task.names else None

    def name():
        if words:
            return next(words)
        return _draw(lambda: "".join(rng.choices(string.ascii_uppercase, k=task.letters)), taken, hay) \
            if task.letters else None
    out = []
    for _ in range(task.chains):
        key = _draw(lambda: str(rng.randrange(10 ** (task.digits - 1), 10 ** task.digits)), taken, hay)
        names = [name() for _ in range(task.hops)]
        texts = [task.needle.format(name=names[0], key=key)]
        texts += [task.hop.format(name=n, prev=p) for p, n in zip(names, names[1:])]
        out.append((names, key, texts))
    return out


def _filler(sentences, budget):
    """Whole haystack sentences (tokens), from the start and round again when it is too short, the last
    one cut at token level so the prompt's length is exact."""
    out, total = [], 0
    for s in itertools.cycle(sentences):
        if total >= budget:
            return out
        out.append(s[:budget - total])
        total += len(out[-1])


def _item(task, tokenizer, length, depth, rng, hay, sentences, head):
    chains = _chains(task, rng, hay)
    tokens = [[tokenizer(" " + t, add_special_tokens=False).input_ids for t in texts] for _, _, texts in chains]
    question = task.question.format(name=chains[0][0][-1])
    tail = tokenizer("\n\n" + question, add_special_tokens=False).input_ids
    budget = length - len(head) - len(tail) - sum(len(t) for chain in tokens for t in chain)
    if budget < 0:
        raise UsageError(f"longctx {task.name}: a length of {length} tokens cannot hold the needles and the "
                         f"question; allowed: at least {length - budget} tokens")
    filler = _filler(sentences, budget)
    bounds = list(itertools.accumulate((len(s) for s in filler), initial=0))

    def nearest(target):
        return min(range(len(bounds)), key=lambda k: abs(bounds[k] - target))
    where = {(0, j): nearest(budget * (depth + (1 - depth) * j / task.hops)) for j in range(task.hops)}
    others = [k for k in range(len(bounds)) if k != where[0, 0]] or [where[0, 0]]
    for c in range(1, task.chains):
        where.update({(c, j): k for j, k in enumerate(sorted(rng.choice(others) for _ in range(task.hops)))})
    ids, needles = list(head), []
    for k in range(len(bounds)):
        for c, j in sorted(cj for cj, at in where.items() if at == k):
            if (c, j) == (0, 0):
                asked = len(ids)
            needles.append({"text": chains[c][2][j], "chain": c, "hop": j, "offset": len(ids),
                            "tokens": len(tokens[c][j])})
            ids += tokens[c][j]
        ids += filler[k] if k < len(filler) else tail
    return {"input_ids": ids, "answer": chains[0][1], "needle_token_offset": asked, "question": question,
            "needles": needles, "filler_start": len(head), "filler_tokens": budget}


def build_items(task, tokenizer, length, depth, n, seed, hay):
    """n prompts of exactly `length` tokens (the tokenizer's special tokens included), each the intro, the
    filler with the needles between its sentences, and the question. The asked chain's first needle goes
    at the sentence boundary nearest `depth` of the filler (the haystack tokens), its later needles spread
    evenly from there to the end; distractor chains go at random boundaries. An item depends only on
    (task, length, depth, seed, index) and the haystack, so every variant is asked the same questions."""
    if not 0 <= depth <= 1:
        raise UsageError(f"longctx: depth {depth} is outside the filler; allowed: 0.0 to 1.0")
    sentences = tokenizer([" " + s for s in hay.splitlines()], add_special_tokens=False).input_ids
    head = tokenizer(task.intro).input_ids
    return [{"id": f"{task.name}-L{length}-d{depth:g}-s{seed}-{i}", "task": task.name, "length": length,
             "depth": depth, "seed": seed,
             **_item(task, tokenizer, length, depth, random.Random(f"{task.name}/{length}/{depth}/{seed}/{i}"),
                     hay, sentences, head)} for i in range(n)]


def score(output, answer):
    """Exact match of the continuation's first line, less surrounding space and trailing punctuation."""
    return output.split("\n", 1)[0].strip().rstrip(".,;:") == answer


def eos_ids(lm):
    """The tokenizer's EOS and every EOS the model's generation config names (Llama-3-Instruct has two)."""
    ids = lm.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({lm.tokenizer.eos_token_id} if lm.tokenizer.eos_token_id is not None else set())


def evaluate(lm, items, max_new_tokens):
    """Greedy continuation of each prompt, batch 1, through the suite's own step and a DynamicCache (a
    compressed model's latent cache rides in it; HF generate would bypass that), up to an EOS (counted in
    new_tokens, not in the output) or max_new_tokens. The cache is freed after every item: a long
    prompt's cache is most of the memory."""
    import torch
    from transformers import DynamicCache

    from gcompress_bench.models import release_memory
    from gcompress_bench.suites.infer import step
    eos = eos_ids(lm)
    out = []
    with torch.inference_mode():
        for item in items:
            t0 = time.perf_counter()
            cache = DynamicCache(config=lm.model.config)
            token, new = torch.tensor([item["input_ids"]], device=lm.device), []
            while len(new) < max_new_tokens and not (new and new[-1] in eos):
                token = step(lm.model, token, cache)
                new.append(token.item())
            text = lm.tokenizer.decode(new[:-1] if new and new[-1] in eos else new)
            del cache, token
            release_memory(lm.device)
            out.append({k: item[k] for k in ("id", "length", "depth", "task", "answer")} |
                       {"output": text, "correct": int(score(text, item["answer"])), "new_tokens": len(new),
                        "seconds": round(time.perf_counter() - t0, 3)})
    return {"items": out, "accuracy": sum(i["correct"] for i in out) / len(out) if out else None, "n": len(out)}


def accuracy_grid(items):
    """Accuracy per (length, depth) of one task's evaluated items: rows lengths, columns depths."""
    lengths, depths = sorted({i["length"] for i in items}), sorted({i["depth"] for i in items})
    cells = {}
    for i in items:
        cells.setdefault((i["length"], i["depth"]), []).append(i["correct"])
    n = [[len(cells.get((L, d), [])) for d in depths] for L in lengths]
    acc = [[sum(cells[L, d]) / len(cells[L, d]) if (L, d) in cells else None for d in depths] for L in lengths]
    return {"lengths": lengths, "depths": depths, "acc": acc, "n": n}


def depth_key(d):
    return f"{d:g}"


def check_grid(g):
    """The longctx section of a run config: known tasks, depths within the filler, counts >= 1."""
    names = list(load_tasks())
    unknown = [t for t in g["tasks"] or [] if t not in names]
    if unknown or not g["tasks"]:
        raise UsageError(f"--longctx-tasks: {','.join(unknown) or 'none given'} is not allowed; allowed: "
                         f"{', '.join(names)} (data/longctx/tasks.yaml)")
    if not g["depths"] or any(not 0 <= d <= 1 for d in g["depths"]):
        raise UsageError(f"--longctx-depths: {g['depths']} is not allowed; allowed: fractions from 0 to 1, e.g. "
                         "0,0.25,0.5,0.75,1")
    keys = [depth_key(d) for d in g["depths"]]   # a cell's accuracy per depth is kept under these
    alike = sorted({k for k in keys if keys.count(k) > 1})
    if alike:
        raise UsageError(f"--longctx-depths: {','.join(map(str, g['depths']))} holds depths that print alike "
                         f"({', '.join(alike)}) and would share one entry; allowed: depths that differ in their "
                         "first 6 significant digits")
    for key in ("lengths", "items", "max_new_tokens"):
        vals = g[key] if isinstance(g[key], list) else [g[key]]
        if not vals or any(not isinstance(v, int) or v < 1 for v in vals):
            raise UsageError(f"--longctx-{key.replace('_', '-')}: {g[key]} is not allowed; it must be "
                             "positive integers")


def measure(lm, task, length, depths, items, seed, max_new_tokens):
    """One cell: `items` prompts of `length` tokens at every depth, answered greedily and scored. The record
    keeps what makes the items reproducible: the seed, the task's templates and the haystack's files and hash."""
    spec = load_tasks()[task]
    hay, sha = haystack()
    built = [it for d in depths for it in build_items(spec, lm.tokenizer, length, d, items, seed, hay)]
    t0 = time.perf_counter()
    res = evaluate(lm, built, max_new_tokens)
    by_depth = {depth_key(d): sum(i["correct"] for i in res["items"] if i["depth"] == d) / items for d in depths}
    return {"task": task, "length": length, "accuracy": res["accuracy"], "n": res["n"], "by_depth": by_depth,
            "items": res["items"], "seed": seed, "max_new_tokens": max_new_tokens, "template": vars(spec),
            "haystack": {"files": yaml.safe_load(TASKS.read_text())["haystack"], "sha256": sha},
            "seconds": round(time.perf_counter() - t0, 3)}


def check_lengths(g, tokenizer, seed):
    """At session start: the shortest length must hold every task's needles and question."""
    hay = haystack()[0]
    for name in g["tasks"]:
        try:
            build_items(load_tasks()[name], tokenizer, min(g["lengths"]), 0.0, 1, seed, hay)
        except UsageError as e:
            raise UsageError(f"--longctx-lengths: {e}") from None


def grids(raw_cells):
    """{task: length x depth accuracy grid} over a run's finished longctx cells."""
    items = {}
    for c in raw_cells.values():
        if c.get("suite") == "longctx" and c.get("status") == "ok":
            items.setdefault(c["task"], []).extend(c["items"])
    return {task: accuracy_grid(found) for task, found in items.items()}


RETRIEVES = 0.5   # a reference below this accuracy retrieves too little for a difference to mean anything


def verdict(p):
    """A paired longctx cell in words: the difference and its test, or why there is nothing to compare."""
    if not p["same_prompts"]:
        return "DIFFERENT prompts (haystack or templates changed): not comparable"
    out = (f"diff {p['diff']:+.4f} over {p['n_paired']} paired prompts; only baseline right "
           f"{p['only_reference_right']}, only candidate right {p['only_candidate_right']}; exact McNemar "
           f"p = {p['mcnemar_p']:.4f}")
    if not p["reference_retrieves"]:
        out += f"; **the baseline retrieves below {RETRIEVES:.0%} here: the comparison says nothing**"
    return out


class Longctx(Suite):
    marker = job = "longctx"
    description = "retrieval of keys hidden at controlled depths of long prompts"
    options = (("--longctx-tasks", "longctx.tasks", "strs", "longctx: retrieval tasks of data/longctx/tasks.yaml "
                                                            "(passkey, multikey, vartrack)"),
               ("--longctx-lengths", "longctx.lengths", "ints", "longctx: prompt lengths in tokens, each its own cell"),
               ("--longctx-depths", "longctx.depths", "floats", "longctx: needle depths, fractions of the filler, "
                                                                "e.g. 0,0.5,1"),
               ("--longctx-items", "longctx.items", "int", "longctx: prompts per (task, length, depth)"),
               ("--longctx-max-new-tokens", "longctx.max_new_tokens", "int", "longctx: greedy tokens at most per "
                                                                             "answer"))
    needs_weights = True
    opt_in = True
    settings = ("longctx.depths", "longctx.items", "longctx.max_new_tokens", "seed")
    compare_keys = ("accuracy", "n", "by_depth")

    def ids(self, g):
        return [(f"{t}-L{n}", {"task": t, "length": n}) for t in g["tasks"] for n in g["lengths"]]

    def validate(self, g):
        check_grid(g)

    def longest(self, g):   # the prompt and its answer
        return {"--longctx-lengths + --longctx-max-new-tokens": max(g["lengths"]) + g["max_new_tokens"]}

    def prepare(self, cfg, spec, tokenizer, device):
        check_lengths(cfg["longctx"], tokenizer, cfg["seed"])

    def measure(self, cell, run, lm, clock, meter):
        from gcompress_bench.measure.cell import run_cell
        g = run.cfg["longctx"]
        return run_cell(measure, lm.device, lm=lm, **cell.params, depths=g["depths"], items=g["items"],
                        seed=run.cfg["seed"], max_new_tokens=g["max_new_tokens"])

    def pair(self, ref, rec):
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

    def paired_lines(self, cid, p, name):
        return [f"- {cid}: {name} {p['candidate']:.4f} vs baseline {p['reference']:.4f} ({verdict(p)})"]

    def headline_items(self, rows, label):
        """The retrieval accuracy change's range over the cells, and how many differ by McNemar's exact test."""
        got = [(r["cell"], p) for r in rows if (p := r["paired"].get(label)) and p["same_prompts"] and p["n_paired"]]
        if not got:
            return []
        lo, hi = (f(got, key=lambda x: x[1]["diff"]) for f in (min, max))
        differ = sum(p["mcnemar_p"] < 0.05 for _, p in got)
        return [f"- long-context retrieval: accuracy {100 * lo[1]['diff']:+.1f} points ({lo[0]}) to "
                f"{100 * hi[1]['diff']:+.1f} ({hi[0]}) over {len(got)} cells; {differ} differ at exact McNemar p < 0.05"]

    def compare_markdown(self, rows, ref, labels):
        f3 = "{:.3f}".format
        return compare_table("long-context retrieval (exact-match accuracy; paired over the same prompts)",
                    ["cell", ref] + [h for label in labels for h in (label, "paired")],
                    [[r["cell"], value(r["values"][ref], "accuracy", f3)] +
                     [x for label in labels for x in (value(r["values"][label], "accuracy", f3),
                                                      verdict(r["paired"][label]) if r["paired"][label] else "—")]
                     for r in rows])

    def compare_plots(self, rows, sides, out, model):
        """A length x depth heatmap per task and side."""
        from gcompress_bench.results import plots
        return [plots.save(plots.heatmap(g, f"{s['label']}: {task} accuracy, {model}"),
                           out / f"longctx_{task}_{s['label']}.png")
                for s in sides for task, g in grids(s["raw"]).items()]

    def progress(self, rec):
        return f" acc {rec['accuracy']:.3f} n={rec['n']} (" + ", ".join(
            f"depth {d} {a:.2f}" for d, a in rec["by_depth"].items()) + ")"

    def write(self, summary, raw_cells, run_dir):
        """A length x depth heatmap per task."""
        from gcompress_bench.results import plots
        return [save_plot(plots.heatmap(grid, f"{summary['variant']}: {task} accuracy, {summary['model']}"), run_dir,
                          f"longctx_{task}.png") for task, grid in grids(raw_cells).items()]

    def markdown(self, s, rows):
        lines = table("longctx (exact-match accuracy of greedy answers)",
                      ["accuracy", "n", "by depth", "seed", "haystack sha256", "s"], rows,
                      dash_unless_ok(6, lambda c: [f"{c['accuracy']:.3f}", str(c["n"]), ", ".join(
                          f"{d}: {a:.2f}" for d, a in c["by_depth"].items()), str(c["seed"]),
                          c["haystack"]["sha256"][:12], f"{c['seconds']:.1f}"]))
        heatmaps = [p for p in s.get("plots", []) if p.startswith("longctx_")]
        return lines + ([""] + [f"![{p}](plots/{p})" for p in heatmaps] if heatmaps else [])


register(Longctx())
