"""Options and their resolution into one run config.

One option table feeds both the pytest plugin and the CLIs, so the two can never disagree;
defaults live in experiments/llm_suites.yaml, not here.
"""
import copy
import os
from pathlib import Path

import yaml

from gcompress_bench import REPO_ROOT, UsageError, methods, suites
from gcompress_bench.methods import align
from gcompress_bench.suites.base import ITER_KEYS

SUITES_FILE = REPO_ROOT / "experiments" / "llm_suites.yaml"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
LAYOUTS = ("hf", "fused")

# (flag, config path, kind, help). kind: str | int | float | ints / floats / strs (comma lists) | limit (int or "all")
# | flag (no value)
OPTIONS = [
    ("--variant", "variant", "str", "baseline, or a compression method (palu, asvd, prune, or a registered plug-in)"),
    ("--model", "model", "str", "smollm2-135m, llama3-8b-shape, an HF id in the local cache, or a model folder"),
    ("--profile", "profile", "str", "profile of experiments/llm_suites.yaml (full, long, quick)"),
    ("--suites-file", "suites_file", "str", "suite YAML (default experiments/llm_suites.yaml)"),
    ("--align-policy", "align_policy", "str", "how a method's dims become physical dims: method (its own rule), "
                                              "none, round:N, pad:N or budget:TABLE (a dims run's table)"),
    ("--results-root", "results_root", "str", "results root; runs land in <root>/<exp_group>/<run_id>/"),
    ("--exp-group", "exp_group", "str", "experiment group (a folder under the results root)"),
    ("--run-id", "run_id", "str", "run id (default: timestamp + variant + suite + model); never reused"),
    ("--device", "device", "str", "auto, cpu or cuda"),
    ("--dtype", "dtype", "str", "float32, bfloat16 or float16"),
    ("--seed", "seed", "int", "seed for inputs and random weights"),
    ("--warmup", "warmup", "int", "warm-up iterations per cell (overrides every timed suite)"),
    ("--iters", "iters", "int", "measured iterations per trial (overrides every timed suite)"),
    ("--trials", "trials", "int", "trials per cell (overrides every timed suite)"),
    ("--layout", "layout", "str", "timing suites' module layout: hf (the modules as Transformers and the method "
                                  "built them; default) or fused (engine-like, as vLLM fuses: one GEMM for Q/K/V and "
                                  "one for gate/up, decode attention per KV head, every method alike)"),
    ("--ops-profile", "ops_profile", "int", "after each timed cell's measured iterations, N more (decode: steps) under "
                                            "torch.profiler: time per operator family, top kernels, GEMM kernels (0 = off)"),
    ("--baseline-run", "baseline_run", "str", "a baseline run dir to compare this run with, item by item"),
    ("--shard", "shard", "str", "i/N: run only slice i (0-based) of N of the selected cells, balanced by cost"),
    ("--check-only", "check_only", "flag", "check that every input (model, datasets, tasks, rank files) is found "
                                           "offline, name each, and stop: exit 0, or 1 if any would fall back"),
    ("--allow-fallback", "allow_fallback", "flag", "run on the stand-in data where the real data is not cached (a "
                                                   "profile with refuse_fallback refuses otherwise); every record "
                                                   "says FALLBACK"),
]


FILE_NAME_MAX = 255   # bytes in one file name, on every file system a cluster mounts


def options():
    """The one option table: the run's own options, every registered suite's, then every method's (--<method>-*)."""
    return OPTIONS + suites.option_rows() + methods.option_rows()


def option_dest(flag):
    return flag.lstrip("-").replace("-", "_")


def _parse(flag, kind, raw):
    if kind in ("int", "float", "ints", "floats", "limit") and not str(raw).isascii():
        # int() reads '١٢' as 12: a number must look the same to the user and to a later reader of config.json
        raise UsageError(f"{flag}: {raw!r} is not allowed; allowed: numbers in ASCII digits")
    if kind == "str" and max(len(part.encode()) for part in str(raw).split("/")) > FILE_NAME_MAX:
        raise UsageError(f"{flag}: {str(raw)[:40]!r}... holds a name longer than {FILE_NAME_MAX} bytes; allowed: "
                         f"names of at most {FILE_NAME_MAX} bytes (the file system's limit)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "ints":
            return [int(v) for v in str(raw).split(",")]
        if kind == "floats":
            return [float(v) for v in str(raw).split(",")]
        if kind == "strs":
            return [v for v in str(raw).split(",") if v]
        if kind == "limit":
            return "all" if raw == "all" else int(raw)
        if kind == "settings":
            return dict(_setting(flag, item) for item in str(raw).split(",") if item)
    except ValueError:
        want = {"int": "an integer", "float": "a number", "ints": "a comma-separated list of integers",
                "floats": "a comma-separated list of numbers",
                "limit": "an integer or 'all'"}[kind]
        raise UsageError(f"{flag}: {raw!r} is not {want}") from None
    return raw


def _setting(flag, item):
    key, sep, value = item.partition("=")
    if not sep:
        raise UsageError(f"{flag}: {item!r} is not allowed; allowed: key=value, comma-separated")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:   # a syntax error, or a tag: safe_load builds plain values only
        raise UsageError(f"{flag}: {item!r} is not allowed ({type(e).__name__}); allowed: key=value with a plain "
                         "value (a number, true/false, a word, a list)") from None


def load_suites(path=None):
    path = Path(path or SUITES_FILE)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"suite file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"suite file {path} can't be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"suite file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict) or not {"defaults", "profiles", "models"} <= data.keys():
        raise UsageError(f"suite file {path} needs the sections defaults, profiles and models")
    return data


def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _set(cfg, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    cfg[leaf] = value


def resolve(given):
    """Merge the plug-ins' defaults, the YAML's defaults, the profile and the given options ({dest: raw value or
    None})."""
    data = load_suites(given.get("suites_file"))
    profile = given.get("profile") or data["defaults"]["profile"]
    if profile not in data["profiles"]:
        raise UsageError(f"--profile: unknown profile {profile!r}; allowed: {', '.join(data['profiles'])}")
    cfg = _merge(_merge(_merge(suites.defaults(), methods.defaults()), data["defaults"]), data["profiles"][profile])
    cfg["profile"] = profile
    cfg["suites_file"] = str(Path(given.get("suites_file") or SUITES_FILE).resolve())
    for flag, path, kind, _ in options():
        raw = given.get(option_dest(flag))
        if raw is None or path in ("profile", "suites_file"):
            continue
        value = _parse(flag, kind, raw)
        if path in ITER_KEYS:
            for marker in suites.timed():
                cfg[marker][path] = value
        else:
            _set(cfg, path, value)
    _validate(cfg, data["models"])
    cfg["models"] = data["models"]
    return cfg


def _check_choice(flag, value, allowed):
    if value not in allowed:
        raise UsageError(f"{flag}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


RUN_NAME_MAX = 200   # bytes of a run id or exp group: a folder name, with room for a generated suffix


def check_folder_name(flag, value):
    """A run id or exp group is one folder under the results root: never a path that leads elsewhere."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise UsageError(f"{flag}: {value!r} is not allowed; allowed: one folder name (no '/', not '.' or '..')")
    if len(value.encode()) > RUN_NAME_MAX:
        raise UsageError(f"{flag}: {value[:40]!r}... is {len(value.encode())} bytes long; allowed: a folder name of "
                         f"at most {RUN_NAME_MAX} bytes")


def _validate(cfg, models):
    for flag, path, kind, _ in options():
        vals = _get(cfg, path)
        if kind in ("ints", "floats", "strs") and isinstance(vals, list) and len(set(vals)) < len(vals):
            repeated = sorted({v for v in vals if vals.count(v) > 1}, key=vals.index)
            raise UsageError(f"{flag}: {','.join(map(str, vals))} repeats {','.join(map(str, repeated))}; "
                             "allowed: each value once")
    check_folder_name("--exp-group", cfg["exp_group"])
    if cfg.get("run_id") is not None:
        check_folder_name("--run-id", cfg["run_id"])
    methods.get(cfg["variant"])
    methods.check_options(cfg)
    if cfg["align_policy"] != "method":
        if cfg["variant"] == "baseline":
            raise UsageError(f"--align-policy: {cfg['align_policy']!r} is not allowed with --variant baseline, which has "
                             "no dims to align; allowed: method")
        align.parse(cfg["align_policy"])
    _check_choice("--dtype", cfg["dtype"], DTYPES)
    _check_choice("--device", cfg["device"], DEVICES)
    model = cfg["model"]
    if model not in models and "/" not in model and not os.path.isdir(model):
        raise UsageError(
            f"--model: unknown model {model!r}; allowed: {', '.join(models)}, "
            "an HF id (org/name) in the local HF cache, or a local model folder")
    for suite in suites.load().values():
        try:
            suite.validate(cfg[suite.marker])
        except KeyError as e:   # a suites file without a section, or without one of its keys
            raise UsageError(f"suite file {cfg['suites_file']}: {suite.marker}.{e.args[0]} is missing (in defaults and "
                             f"in profile {cfg['profile']}); allowed: a {suite.marker} section with every key of "
                             "experiments/llm_suites.yaml's") from None
    if not isinstance(cfg["seed"], int) or not 0 <= cfg["seed"] < 2**32:
        raise UsageError(f"--seed: {cfg['seed']!r} is not allowed; allowed: an integer from 0 to 2**32 - 1 (numpy's "
                         "and torch's seeds both take it)")
    if not isinstance(cfg["ops_profile"], int) or cfg["ops_profile"] < 0:
        raise UsageError(f"--ops-profile: {cfg['ops_profile']!r} is not allowed; it must be an integer >= 0 (0 = off)")
    _check_choice("--layout", cfg["layout"], LAYOUTS)
    if cfg["baseline_run"] and not os.path.isfile(os.path.join(cfg["baseline_run"], "raw.json")):
        raise UsageError(f"--baseline-run: {cfg['baseline_run']!r} holds no raw.json; allowed: a baseline run dir")
    if cfg.get("shard") is not None:
        cfg["shard"] = parse_shard(cfg["shard"])


def check_lengths(cfg, max_positions, markers, synthetic=False):
    """A cell longer than the model's context is a usage error, not an OOM or silent garbage.
    Random weights have no quality to lose, so a synthetic model times any length."""
    if synthetic:
        return
    for marker in markers:
        for what, n in suites.load()[marker].longest(cfg[marker]).items():
            if n > max_positions:
                raise UsageError(f"{what} {n} is longer than the model's context of {max_positions} tokens; "
                                 f"allowed: at most {max_positions}")


def parse_shard(text):
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard: {text!r} is not allowed; allowed: i/N with N >= 1 and 0 <= i < N, e.g. 0/2")
    return [i, n]


def shard_cells(costs, n):
    """Deterministic longest-first partition: {cell id: shard}. costs = {cell id: cost}."""
    load, out = [0] * n, {}
    for cid in sorted(costs, key=lambda c: (-costs[c], c)):
        k = min(range(n), key=lambda j: (load[j], j))
        out[cid] = k
        load[k] += costs[cid]
    return out
