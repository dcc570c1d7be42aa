"""lm-eval accuracy on the in-memory model, through the real lm-evaluation-harness.

A built-in task (piqa, hellaswag, any task of the installed lm-eval) runs lm-eval's own task
definition on its dataset from the local HF cache. When piqa's or hellaswag's dataset is not
cached, its offline stand-in from data/tasks/ runs instead and the record says FALLBACK; a
fallback is never silent. Every record carries what was evaluated: the data source, the dataset
revision or the task files' hashes, a sha256 of the documents scored, and n against n available.

lm-eval's RULER tasks (niah_single_1, ruler_vt, ...) are generated, not read: their documents are built at
one length (--lmeval-ruler-length) with the model's own tokenizer, after fixed seeds, so two runs score the
same prompts. They are answered greedily at 0 shots and scored as the share of gold strings found.
"""
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gcompress_bench import REPO_ROOT, UsageError
from gcompress_bench.fmt import plus_minus
from gcompress_bench.results.stats import mcnemar_exact, paired_diff_interval
from gcompress_bench.suites import Suite, register
from gcompress_bench.suites.tables import compare_table, dash_unless_ok, data_source, table

TASKS_DIR = REPO_ROOT / "data" / "tasks"
FALLBACKS = {"piqa": "mini_piqa", "hellaswag": "mini_hellaswag"}   # offline stand-ins in data/tasks/

# lm-eval's RULER tasks: those that build their documents offline (they need the package wonderwords), and
# those whose haystack or questions come from a dataset (None: fetched from the web by lm-eval, never cached)
RULER_OFFLINE = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_cwe", "ruler_vt", "ruler_fwe")
RULER_DATA = {**dict.fromkeys(("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multiquery",
                               "niah_multivalue"), "baber/paul_graham_essays"),
              "ruler_qa_squad": None, "ruler_qa_hotpot": None}
RULER_TASKS = RULER_OFFLINE + tuple(RULER_DATA)
RULER_MIN_LENGTH = 512   # a RULER prompt's template and its 128 answer tokens must fit
RULER_SEEDS = (0, 1234)   # random, numpy.random: seeded right before the documents are built


@dataclass(frozen=True)
class Metrics:
    """What a task's record reports: `names` are record keys (each with <name>_stderr beside it), and
    `outcome[name]` is the per-item 0/1 key that a paired comparison runs McNemar on."""
    names: tuple
    outcome: dict


CHOICE = Metrics(("acc", "acc_norm"), {"acc": "acc", "acc_norm": "acc_norm"})
ACC = Metrics(("acc",), {"acc": "acc"})   # a multiple-choice task whose metric_list has no acc_norm (winogrande, mmlu)
RULER = Metrics(("score",), {"score": "correct"})   # score: share of gold strings found; correct: all found


def metrics(rec):
    """The Metrics of a record (a raw cell, a summary cell or a slice of one): RULER records carry a length."""
    if rec.get("length") is not None:
        return RULER
    return CHOICE if "acc_norm" in rec else ACC


def check_task(name, cfg, where):
    """At session start: a task must be one whose record this suite can write, multiple choice reporting acc
    (acc_norm too where it does), so a generation task is refused before any cell instead of after its run."""
    listed = cfg.get("metric_list")
    have = ({m.get("metric") for m in listed if isinstance(m, dict)} if isinstance(listed, list)
            else {"acc", "acc_norm"})   # lm-eval's default metrics for multiple_choice
    if cfg.get("output_type") != "multiple_choice" or "acc" not in have:
        raise UsageError(f"--tasks: {name} ({where}) is {cfg.get('output_type')!r} with metrics "
                         f"{sorted(map(str, have))}; allowed: a multiple_choice task whose metrics include acc, "
                         "or a RULER task")


def row_metrics(row):
    """A comparison row's metrics (acc and acc_norm, or a RULER task's score), from a side that ran it."""
    return metrics(next((v for v in row["values"].values() if "missing" not in v), {})).names


@dataclass
class TaskSource:
    """What runs for one requested task name, and where its data comes from."""
    spec: object                 # a built-in task name, or a local task's config dict
    source: str                  # for records and summaries; starts with FALLBACK when it is one
    provenance: dict = field(default_factory=dict)   # dataset revision, or {file: sha256} of a local task


@functools.cache
def builtin_index(store=True):
    """{task name: its YAML} for every single task of the installed lm-eval. lm-eval's TaskManager reads all of
    its 14,000 YAMLs to find them (6 s a process here), so the names are found once per lm-eval install and kept
    in the suite cache (an entry like the others: atomic, checked by content). A cache this user can't write, or
    store=False (--check-only), gets them found in memory."""
    import lm_eval

    from gcompress_bench import cache, models
    root = Path(lm_eval.__file__).parent / "tasks"
    key = hashlib.sha256(f"{importlib.metadata.version('lm_eval')} {root}".encode()).hexdigest()[:16]
    folder = models.CACHE_ROOT / "lm-eval-tasks" / key

    def build(tmp):
        (tmp / "tasks.json").write_text(json.dumps(_scan(), indent=0))
    try:
        if store or (folder.is_dir() and cache.problem(folder) is None):
            cache.entry(folder, build)
            return json.loads((folder / "tasks.json").read_text())
    except OSError:
        pass
    return _scan()


def _scan():
    from lm_eval.tasks import TaskManager

    return {name: str(e.yaml_path) for name, e in TaskManager().task_index.items()
            if e.kind.name == "TASK" and e.yaml_path is not None}


@functools.cache
def builtin_config(task, store=True):
    """The YAML config of a built-in task, its includes resolved and its functions not."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(builtin_index(store)[task], resolve_func=False)


def builtin_dataset(task, store=True):
    """(dataset_path, dataset_name) that the installed lm-eval's YAML for `task` reads from the HF hub."""
    if task not in builtin_index(store):
        raise UsageError(f"--tasks: {task!r} is not a single task of the installed lm-eval (groups and tags: "
                         "name their tasks one by one)")
    cfg = builtin_config(task, store)
    return cfg.get("dataset_path"), cfg.get("dataset_name")


@functools.cache
def _cached_dataset(path, name):
    """(the dataset from the local HF datasets cache, None) or (None, why not); never a download."""
    from datasets import load_dataset

    try:
        return load_dataset(path, name), None
    except Exception as e:  # noqa: BLE001 - any failure offline means "not cached"
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


def cached_revision(path, name):
    """The commit of a dataset in the local HF datasets cache, or (None, why not)."""
    ds, why = _cached_dataset(path, name)
    if ds is None:
        return None, why
    return Path(next(iter(ds.values())).cache_files[0]["filename"]).parent.name, None


def shot_pool(task, store=True):
    """How many documents a task draws its shots from: the rows of its fewshot split, or else of the first
    of its training, validation and test splits, as lm-eval picks it. A local task's files are read into a
    throwaway datasets cache (a check writes nothing); a built-in's dataset is the cached one."""
    import datasets
    cfg = builtin_config(task.spec, store) if isinstance(task.spec, str) else task.spec
    split = next((cfg[k] for k in ("fewshot_split", "training_split", "validation_split", "test_split") if cfg.get(k)),
                 None)
    if split is None:   # a task naming no split: lm-eval says so itself when it loads it
        return None
    if isinstance(task.spec, str):   # a cache without that split: the same
        ds = _cached_dataset(cfg["dataset_path"], cfg.get("dataset_name"))[0]
        return len(ds[split]) if split in ds else None
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return len(datasets.load_dataset(cfg["dataset_path"], cfg.get("dataset_name"), split=split, cache_dir=tmp,
                                             **cfg.get("dataset_kwargs", {})))
    finally:
        if shown:
            datasets.enable_progress_bars()


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def local_tasks(folder):
    """{task: TaskSource} for every task YAML under `folder`, recursively, as lm-eval indexes them;
    data_files are relative to their YAML and are made absolute here."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(folder).rglob("*.yaml")):   # lm-eval skips a bad YAML silently; a user must hear of it
        try:
            cfg = load_yaml(path, resolve_func=False)
        except Exception as e:  # noqa: BLE001 - any YAML or include error
            raise UsageError(f"--tasks-path: {path} is not a valid task YAML ({str(e).splitlines()[0]})") from None
        if not {"task", "group", "class"} & set(cfg):
            raise UsageError(f"--tasks-path: {path} has no 'task:' (nor 'group:'); allowed: lm-eval task YAMLs "
                             "(a shared template goes in a file not ending in .yaml, as lm-eval does)")
    out = {}
    for name, entry in TaskManager(include_path=str(folder), include_defaults=False).task_index.items():
        if entry.yaml_path is None or entry.cfg is None or "task" not in entry.cfg:
            continue
        cfg = load_yaml(entry.yaml_path, resolve_func=True)
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        for split, f in files.items():
            files[split] = str((Path(entry.yaml_path).parent / f).resolve())
        prov = {str(p): _sha256(p) for p in [entry.yaml_path, *files.values()] if Path(p).is_file()}
        out[name] = TaskSource(cfg, str(entry.yaml_path), {"files": prov})
    return out


def resolve_tasks(names, tasks_path=None, store=True):
    """Each requested task -> TaskSource; an unknown name is a usage error naming where it looked. store=False
    (--check-only): nothing is written to the suite cache."""
    user = local_tasks(tasks_path) if tasks_path else {}
    mini = local_tasks(TASKS_DIR)
    out = {}
    for name in names:
        if name in user or name in mini:
            out[name] = user.get(name) or mini[name]
            check_task(name, out[name].spec, out[name].source)
            continue
        if name not in builtin_index(store):
            searched = ", ".join(filter(None, [f"{tasks_path} (recursively)" if tasks_path else None,
                                               str(TASKS_DIR), "the installed lm-eval's built-in tasks"]))
            local = sorted(set(user) | set(mini))
            raise UsageError(f"--tasks: unknown task {name!r}; searched {searched}; allowed: a task of the "
                             f"installed lm-eval (e.g. piqa, hellaswag) or one of {', '.join(local)}")
        if name in RULER_TASKS:
            out[name] = ruler_source(name)
            continue
        check_task(name, builtin_config(name, store), "the installed lm-eval's built-in task")
        path, config = builtin_dataset(name, store)
        revision, why = cached_revision(path, config)
        if revision:
            out[name] = TaskSource(name, f"{path} (HF datasets cache, revision {revision})",
                                   {"dataset": path, "config": config, "revision": revision})
        elif name in FALLBACKS:
            stand_in = mini[FALLBACKS[name]]
            out[name] = TaskSource(stand_in.spec, f"FALLBACK: {path} is not in the local HF datasets cache; ran "
                                                  f"{FALLBACKS[name]} from {stand_in.source}", stand_in.provenance)
        else:
            raise UsageError(f"--tasks: {name}'s dataset {path!r} is not in the local HF datasets cache ({why}); "
                             f"fill the cache on a machine with network: python tools/fill_hf_cache.py --tasks {name}")
    return out


def ruler_source(name):
    """A RULER task's TaskSource: generated offline, or from its dataset in the local HF cache."""
    if importlib.util.find_spec("wonderwords") is None:   # lm-eval's RULER samplers import it
        raise UsageError(f"--tasks: {name} needs the Python package wonderwords, which is not installed; install "
                         "it with: pip install -e '.[eval]'")
    if name in RULER_OFFLINE:
        return TaskSource(name, "generated by lm-eval's RULER (offline)", {"seeds": list(RULER_SEEDS)})
    path, offline = RULER_DATA[name], f"allowed offline: {', '.join(RULER_OFFLINE)}"
    if path is None:
        raise UsageError(f"--tasks: {name} needs data that lm-eval downloads from the web at run time (its questions), "
                         f"never from the HF cache; {offline}")
    revision, why = cached_revision(path, None)
    if not revision:
        raise UsageError(f"--tasks: {name} needs data from the HF cache: the dataset {path!r} is not in the local HF "
                         f"datasets cache ({why}); {offline}")
    return TaskSource(name, f"generated by lm-eval's RULER from {path} (HF datasets cache, revision {revision})",
                      {"dataset": path, "revision": revision, "seeds": list(RULER_SEEDS)})


def _number(value):
    """lm-eval reports "N/A" for a stderr it cannot compute (one item)."""
    return float(value) if isinstance(value, (int, float)) else None


def _docs_sha256(docs):
    return hashlib.sha256(json.dumps([dict(d) for d in docs], sort_keys=True, default=str).encode()).hexdigest()


def _load(task, lm, ruler_length):
    """(its TaskManager, name, lm-eval task object); a RULER task's documents are built here, at one length,
    after fixed seeds."""
    import numpy as np
    from lm_eval.tasks import TaskManager

    if task.spec in RULER_TASKS:
        manager = TaskManager(include_defaults=False, metadata={"tokenizer": lm.spec.path,
                                                                "max_seq_lengths": [ruler_length]})
        random.seed(RULER_SEEDS[0])
        np.random.seed(RULER_SEEDS[1])
    else:
        manager = TaskManager(include_defaults=False)
    # a built-in task is loaded from its YAML's path, as TaskManager does after looking its name up
    spec = builtin_index()[task.spec] if isinstance(task.spec, str) else task.spec
    (name, task_obj), = manager.load(spec)["tasks"].items()
    return manager, name, task_obj


def _choice_items(samples, names):
    return [{"doc_id": s["doc_id"], "target": s["target"], "loglik": [float(r[0]) for r in s["filtered_resps"]],
             **{m: s[m] for m in names}} for s in samples]


def _ruler_items(samples, length):
    return [{"doc_id": s["doc_id"], "target": s["target"], "response": s["filtered_resps"][0],
             "score": s[str(length)], "correct": s[str(length)] == 1} for s in samples]


def evaluate(lm, task, fewshot, limit, batch_size, ruler_length=None):
    """Multiple choice: acc (and acc_norm where the task reports it) with stderr and per-item log-likelihoods.
    RULER (at `ruler_length` tokens, 0 shots): the mean score, and per item the greedy answer, its score and
    whether it is fully right. Both: n of n available and provenance. lm-eval's own default seeds are kept, so a
    direct `simple_evaluate` call reproduces a cell."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    t0 = time.perf_counter()
    ruler = task.spec in RULER_TASKS
    if ruler and (fewshot != 0 or not ruler_length):
        raise UsageError(f"{task.spec}: a RULER task runs at 0 shots and one length; got fewshot {fewshot}, "
                         f"length {ruler_length}")
    manager, name, task_obj = _load(task, lm, ruler_length)
    docs = list(task_obj.eval_docs)
    n = len(docs) if limit is None else min(limit, len(docs))
    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=model, tasks=[task_obj], num_fewshot=fewshot, limit=limit,
                                  log_samples=True, task_manager=manager)   # its own would index every task again
    res = out["results"][name]
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    if ruler:   # lm-eval names the metric by the length
        scores = {"score": _number(res[f"{ruler_length},none"]),
                  "score_stderr": _number(res.get(f"{ruler_length}_stderr,none")), "length": ruler_length}
        per_item = _ruler_items(samples, ruler_length)
    else:
        names = [m for m in CHOICE.names if f"{m},none" in res]
        scores = {k: _number(res[f"{k},none"]) for m in names for k in (m, f"{m}_stderr")}
        per_item = _choice_items(samples, names)
    split = task_obj.config.test_split or task_obj.config.validation_split
    return {"task": name, "source": task.source, "fewshot": fewshot, "limit": limit, "n": len(per_item),
            "n_available": len(docs), "split": split,
            "data": {**task.provenance, "docs_sha256": _docs_sha256(docs[:n])}, **scores,
            "lm_eval": importlib.metadata.version("lm_eval"), "seconds": time.perf_counter() - t0,
            "items": per_item}


class Lmeval(Suite):
    marker = job = "lmeval"
    description = "lm-evaluation-harness tasks, through the real harness"
    options = (("--tasks", "lmeval.tasks", "strs", "lmeval: comma-separated tasks, e.g. piqa,hellaswag"),
               ("--limit", "lmeval.limit", "limit", "lmeval: first N documents per task, or all"),
               ("--fewshot", "lmeval.fewshot", "ints", "lmeval: few-shot counts, each its own cell, e.g. 0,1"),
               ("--tasks-path", "lmeval.tasks_path", "str", "lmeval: a folder of your own task YAMLs (searched "
                                                            "recursively)"),
               ("--lmeval-ruler-length", "lmeval.ruler_length", "int", "lmeval: tokens of each RULER task's prompts "
                                                                       "and answer (niah_single_1, ruler_vt, ...; one "
                                                                       "length per run)"))
    needs_weights = True
    settings = ("lmeval.limit", "lmeval.batch_size", "lmeval.tasks_path", "lmeval.ruler_length")
    compare_keys = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "score", "score_stderr", "length", "n", "fewshot",
                    "source")

    def ids(self, g):
        return [(f"{t}-{k}shot", {"task": t, "fewshot": k}) for t in g["tasks"] for k in g["fewshot"]]

    def validate(self, g):
        limit = g["limit"]
        if limit != "all" and (not isinstance(limit, int) or limit < 1):
            raise UsageError(f"--limit: {limit!r} is not allowed; it must be an integer >= 1 or 'all'")
        if not g["tasks"] or any(k < 0 for k in g["fewshot"]) or not g["fewshot"]:
            raise UsageError(f"--tasks/--fewshot: {g['tasks']}/{g['fewshot']} is not allowed; "
                             "give at least one task and few-shot counts >= 0")
        ruler = [t for t in g["tasks"] if t in RULER_TASKS]
        if ruler and g["fewshot"] != [0]:
            raise UsageError(f"--fewshot: {','.join(map(str, g['fewshot']))} is not allowed with the RULER "
                             f"task(s) {', '.join(ruler)}; allowed: --fewshot 0")
        length = g.get("ruler_length")
        if ruler and (not isinstance(length, int) or length < RULER_MIN_LENGTH):
            raise UsageError(f"--lmeval-ruler-length: {length!r} is not allowed; it must be an integer >= "
                             f"{RULER_MIN_LENGTH} (a RULER prompt's template and its 128 answer tokens must fit)")
        if g["tasks_path"] and not os.path.isdir(g["tasks_path"]):
            raise UsageError(f"--tasks-path: {g['tasks_path']!r} is not a folder")

    def longest(self, g):   # a RULER prompt and its answer
        return {"--lmeval-ruler-length": g["ruler_length"]} if any(t in RULER_TASKS for t in g["tasks"]) else {}

    def prepare(self, cfg, spec, tokenizer, device):
        """{task name: TaskSource}: the data each requested task reads, with enough documents for the shots."""
        g = cfg["lmeval"]
        store = not cfg.get("check_only")   # a check writes nothing, not even the task index
        tasks = resolve_tasks(g["tasks"], g["tasks_path"], store)
        shots = max(g["fewshot"])
        for name, task in tasks.items():
            if shots and name not in RULER_TASKS:
                pool = shot_pool(task, store)
                if pool is not None and shots >= pool:   # lm-eval draws shots + 1, then drops the one asked
                    raise UsageError(f"--fewshot: {shots} is not allowed for {name}, whose few-shot pool holds {pool} "
                                     f"documents; allowed: 0 to {pool - 1}")
        return tasks

    def inputs(self, cfg, tasks):
        return [f"lmeval {name}: {t.source}" for name, t in tasks.items()]

    def measure(self, cell, run, lm, clock, meter):
        from gcompress_bench.measure.cell import run_cell
        g = run.cfg["lmeval"]
        limit = None if g["limit"] == "all" else g["limit"]
        rec = run_cell(evaluate, lm.device, lm=lm, task=run.state["lmeval"][cell.params["task"]],
                       fewshot=cell.params["fewshot"], limit=limit, batch_size=g["batch_size"],
                       ruler_length=g.get("ruler_length"))
        assert rec["status"] != "ok" or 1 <= rec["n"] == min(limit or rec["n_available"], rec["n_available"])
        return rec

    def pair(self, ref, rec):
        """Per metric: the means over the items both answered, their difference with its 95% interval (items
        resampled in pairs), and McNemar over the items' 0/1 outcomes; a multiple-choice task's chance level.
        RULER documents are generated: they are the same only if built alike."""
        mine = {i["doc_id"]: i for i in rec["items"]}
        pairs = [(i, mine[i["doc_id"]]) for i in ref["items"] if i["doc_id"] in mine]
        cell = {"n_paired": len(pairs)}
        if pairs and "loglik" in pairs[0][0]:   # the expected accuracy of a uniform guess
            cell["chance"] = sum(1 / len(x["loglik"]) for x, _ in pairs) / len(pairs)
        for metric, outcome in metrics(rec).outcome.items():
            a, b = [x[metric] for x, _ in pairs], [y[metric] for _, y in pairs]
            only_base, only_other, p = mcnemar_exact([x[outcome] for x, _ in pairs], [y[outcome] for _, y in pairs])
            cell[metric] = {"reference": sum(a) / len(a), "candidate": sum(b) / len(b),
                            "diff": (sum(b) - sum(a)) / len(a), "diff_ci": paired_diff_interval(a, b),
                            "only_reference_right": only_base, "only_candidate_right": only_other, "mcnemar_p": p}
        if metrics(rec) is RULER:
            cell["same_docs"] = ref["data"]["docs_sha256"] == rec["data"]["docs_sha256"]
        return cell

    def paired_lines(self, cid, p, name):
        return [f"- {cid} {m}: {name} {q['candidate']:.4f} vs baseline {q['reference']:.4f} (diff {q['diff']:+.4f} "
                f"[{q['diff_ci'][0]:+.4f}, {q['diff_ci'][1]:+.4f}] over {p['n_paired']} paired items; only baseline right {q['only_reference_right']}, only {name} "
                f"right {q['only_candidate_right']}; exact McNemar p = {q['mcnemar_p']:.4f}" +
                ("" if p.get("same_docs", True) else "; **DIFFERENT documents: not comparable**") + ")"
                for m, q in ((m, p[m]) for m in CHOICE.names + RULER.names if m in p)]

    def headline_items(self, rows, label):
        """Per cell, its first metric (acc, or a RULER task's score) in points, with its interval, p, n and chance."""
        out = []
        for r in rows:
            p = r["paired"].get(label)
            m = row_metrics(r)[0]
            if not p or m not in p:
                continue
            q, (lo, hi) = p[m], p[m]["diff_ci"]
            chance = f", chance {100 * p['chance']:.1f}%" if "chance" in p else ""
            out.append(f"- accuracy {r['cell']} {m}: {100 * q['diff']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                       + (" no measurable difference" if lo <= 0 <= hi else "") +
                       f" (exact McNemar p {q['mcnemar_p']:.3f}, n {p['n_paired']}{chance})")
        return out

    def compare_markdown(self, rows, ref, labels):
        def chance(r):
            c = next((p["chance"] for p in r["paired"].values() if p and "chance" in p), None)
            return f"{c:.3f}" if c is not None else "—"

        def acc(v, m):
            return v["missing"] if "missing" in v else plus_minus(v[m], v[m + "_stderr"])

        def diff(q):
            if not q:
                return "—"
            lo, hi = q["diff_ci"]
            return (f"{q['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (" no measurable difference" if lo <= 0 <= hi else "")
                    + f" (p {q['mcnemar_p']:.3f}; {q['only_reference_right']}/{q['only_candidate_right']})")
        return compare_table("accuracy (± stderr; diff to the reference over the same items, [its 95% bootstrap "
                    "interval, items paired], \"no measurable difference\" where it holds 0, exact McNemar p, items only "
                    "the reference / only the candidate got right; RULER score: share of gold strings found, an item "
                    "right when all are)", ["cell", "metric", ref] + [h for label in labels for h in (label, "diff")] +
                    ["chance", "data"],
                    [[r["cell"], m, acc(r["values"][ref], m)] +
                     [x for label in labels for x in (acc(r["values"][label], m),
                                                      diff((r["paired"][label] or {}).get(m)))]
                     + [chance(r), str(next((v["source"] for v in r["values"].values() if "source" in v), "—"))]
                     for r in rows for m in row_metrics(r)])

    def compare_plots(self, rows, sides, out, model):
        """One panel per metric: each candidate's paired difference to the reference, per cell, with its 95%
        interval, against a line at zero."""
        from gcompress_bench.results import plots
        labels = [s["label"] for s in sides[1:]]
        by_metric = {m: [r for r in rows if m in row_metrics(r)] for m in CHOICE.names + RULER.names}
        return [plots.save(plots.paired_differences([
            (f"{m}: candidate − {sides[0]['label']} (95% interval)",
             [r["cell"].removeprefix("test_lmeval") for r in found],
             {label: [(q["diff"], q["diff_ci"]) if (q := (r["paired"][label] or {}).get(m)) else None for r in found]
              for label in labels})
            for m, found in by_metric.items() if found], "difference (points)"), out / "accuracy.png")]

    def progress(self, rec):
        m = metrics(rec).names[0]   # acc, or a RULER task's score
        return f" {m} {plus_minus(rec[m], rec[m + '_stderr'], 3)} n={rec['n']} ({rec['source']})"

    def markdown(self, s, rows):
        ruler = [(cid, c) for cid, c in rows if metrics(c) is RULER]
        return table("lmeval", ["acc ± stderr", "acc_norm ± stderr", "n of available", "shots", "data",
                                "docs sha256", "s"], [r for r in rows if r not in ruler],
                     dash_unless_ok(7, lambda c: [plus_minus(c["acc"], c["acc_stderr"]),
                                                  plus_minus(c["acc_norm"], c["acc_norm_stderr"])
                                                  if "acc_norm" in c else "—",
                                                  f"{c['n']} of {c.get('n_available', '?')}", str(c["fewshot"]),
                                                  data_source(c), c.get("data", {}).get("docs_sha256", "—")[:12],
                                                  f"{c['seconds']:.1f}"])) + \
            table("lmeval RULER (score: share of the gold strings a greedy answer holds, 0 shots)",
                  ["score ± stderr", "n of available", "length", "data", "docs sha256", "s"], ruler,
                  dash_unless_ok(6, lambda c: [plus_minus(c["score"], c["score_stderr"]),
                                               f"{c['n']} of {c['n_available']}", str(c["length"]),
                                               data_source(c), c["data"]["docs_sha256"][:12],
                                               f"{c['seconds']:.1f}"]))


register(Lmeval())
