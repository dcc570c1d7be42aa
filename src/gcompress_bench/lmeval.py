"""lm-eval accuracy on the in-memory model, through the real lm-evaluation-harness.

A built-in task (piqa, hellaswag) runs when its dataset is in the local HF cache; otherwise its
offline stand-in from data/tasks/ runs, and the record says so: a fallback is never silent.
"""
import importlib.metadata
import time
from pathlib import Path

import yaml

from . import REPO_ROOT, UsageError

TASKS_DIR = REPO_ROOT / "data" / "tasks"
BUILTIN = {"piqa": "baber/piqa", "hellaswag": "Rowan/hellaswag"}   # the HF datasets lm-eval's tasks read


def local_task_configs(folder):
    """Task YAMLs of a folder as dicts, their data_files made absolute (relative to the YAML)."""
    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        for split, f in files.items():
            files[split] = str((path.parent / f).resolve())
        out[cfg["task"]] = cfg
    return out


def builtin_cached(task):
    """Whether a built-in task's dataset loads from the local HF cache (offline: fails at once if not)."""
    from datasets import load_dataset

    try:
        load_dataset(BUILTIN[task], split="validation")
        return True
    except Exception:  # noqa: BLE001 - any failure offline means "not cached"
        return False


def resolve_tasks(names, tasks_path=None):
    """Each requested task -> (what runs, its data source); unknown names are a usage error."""
    if tasks_path and not Path(tasks_path).is_dir():
        raise UsageError(f"--tasks-path: {tasks_path!r} is not a folder")
    user = local_task_configs(tasks_path) if tasks_path else {}
    mini = local_task_configs(TASKS_DIR)
    out = {}
    for name in names:
        if name in user:
            out[name] = (user[name], f"{tasks_path}/{name} (user task)")
        elif name in mini:
            out[name] = (mini[name], f"{mini[name]['dataset_kwargs']['data_files']['test']} (project mini task)")
        elif name in BUILTIN:
            if builtin_cached(name):
                out[name] = (name, f"{BUILTIN[name]} (HF datasets cache)")
            else:
                stand_in = mini[f"mini_{name}"]
                out[name] = (stand_in, f"FALLBACK: {BUILTIN[name]} is not in the local HF datasets cache; "
                                       f"ran {stand_in['task']} from {stand_in['dataset_kwargs']['data_files']['test']}")
        else:
            allowed = sorted(set(BUILTIN) | set(mini) | set(user))
            raise UsageError(f"--tasks: unknown task {name!r}; allowed: {', '.join(allowed)}")
    return out


def evaluate(lm, task, source, fewshot, limit, batch_size):
    """acc/acc_norm with stderr, n, and per-item log-likelihoods for item-by-item comparison."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=model, tasks=[task], num_fewshot=fewshot, limit=limit,
                                  task_manager=TaskManager(), log_samples=True, random_seed=0,
                                  numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    name = task if isinstance(task, str) else task["task"]
    res = out["results"][name]
    items = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    per_item = [{"doc_id": s["doc_id"], "target": s["target"],
                 "loglik": [float(r[0]) for r in s["filtered_resps"]],
                 "acc": s["acc"], "acc_norm": s["acc_norm"]} for s in items]
    return {"task": name, "source": source, "fewshot": fewshot, "limit": limit, "n": len(per_item),
            "acc": res["acc,none"], "acc_stderr": res["acc_stderr,none"],
            "acc_norm": res["acc_norm,none"], "acc_norm_stderr": res["acc_norm_stderr,none"],
            "lm_eval": importlib.metadata.version("lm_eval"), "seconds": time.perf_counter() - t0,
            "items": per_item}
